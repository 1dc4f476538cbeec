"""A few catalogue cases through a real `python -m engine` process: stderr is one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, toy_profile_dict
from tests.malformed.builders import write_3dgs_ply


def _run(args, tmp_path):
    env = dict(os.environ, LORA3D_PLUGINS="tests.toy_family", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_real_processes_print_one_message_and_exit_2(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text(yaml.safe_dump(toy_profile_dict(tmp_path), sort_keys=False).replace("r: 4", "r: eight"))
    ply = write_3dgs_ply(tmp_path / "s.ply")
    ply.write_bytes(ply.read_bytes()[:300])
    cases = [
        (["validate", str(bad_yaml)], "`lora.r`"),
        (["train", str(bad_yaml), "--quiet"], "`lora.r`"),
        (["import-3dgs", str(ply), str(tmp_path / "dest")], "s.ply"),
        (["watch", str(tmp_path / "nope"), "--plain"], "run directory not found"),
    ]
    for args, words in cases:
        proc = _run(args, tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and words in proc.stderr, proc.stderr
    assert not (tmp_path / "dest").exists() and not (tmp_path / "run").exists()
