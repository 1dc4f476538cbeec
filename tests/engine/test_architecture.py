"""The architecture's rules, checked on the source: import layers, lazy imports said, no family names in the engine.

docs/architecture.md describes the layers; pyproject.toml's `[tool.importlinter]` holds the contract.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.families.registry import family_entries

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
SOURCES = ("engine", "wizard")
FAMILY_FREE_EXEMPT = ("engine/families/", "engine/models/", "engine/lora/")
"""Where family and architecture names belong: the families' folders, the models (PT-v3m1, the MIDI DiT) and
the architecture-specific LoRA rules and presets of the seeds' API."""


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is a dev dependency (./quickstart.sh test installs it)")
def test_import_layers_hold():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is a dev dependency (./quickstart.sh test installs it)")
def test_an_upward_import_breaks_the_contract(tmp_path):
    for name in SOURCES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    # the profile layer reaching up into the trainer, inside a function as the old cycle-dodging imports did
    (tmp_path / "engine" / "profile" / "_planted.py").write_text("def f():\n    import engine.train.trainer\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "engine.profile is not allowed to import engine.train" in result.stdout


def _function_imports(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                found.append((sub.lineno, lines[sub.lineno - 1]))
    return found


def _said_lazy(lines: list[str], lineno: int) -> bool:
    """`# lazy:` on the import line, or on a comment line of the block of imports right above it."""
    if "# lazy:" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and (lines[i].strip().startswith(("from ", "import ", "#")) or not lines[i].strip()):
        if "# lazy:" in lines[i]:
            return True
        if not lines[i].strip():
            return False
        i -= 1
    return False


def test_every_import_inside_a_function_says_why_it_is_lazy():
    unsaid = []
    for name in SOURCES:
        for path in sorted((REPO / name).rglob("*.py")):
            lines = path.read_text(encoding="utf-8").splitlines()
            unsaid += [f"{path.relative_to(REPO)}:{n}: {line.strip()}" for n, line in _function_imports(path)
                       if not _said_lazy(lines, n)]
    assert not unsaid, "imports inside functions without a `# lazy: <why>` comment:\n" + "\n".join(unsaid)


def test_no_family_name_outside_the_families_and_models():
    names = sorted(family_entries())
    assert {"toy"} < set(names)  # the test plugin is registered, so its name is checked too
    pattern = re.compile(r"(?<![a-z])(" + "|".join(map(re.escape, names)) + r")(?![a-z])", re.IGNORECASE)
    hits = []
    for name in SOURCES:
        for path in sorted((REPO / name).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith(FAMILY_FREE_EXEMPT) or rel == "engine/families/registry.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "family names outside engine/families, engine/models and engine/lora:\n" + "\n".join(hits)
