"""quickstart.sh's check of the torch build pip would install against the NVIDIA driver (scripts/torch_build.py)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import torch_build  # noqa: E402


def _report(tmp_path, packages: dict[str, str]):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"install": [{"metadata": {"name": n, "version": v}} for n, v in packages.items()]}))
    return path


@pytest.mark.parametrize(
    ("packages", "build"),
    [({"torch": "2.5.1+cu121"}, (12, 1)), ({"torch": "2.13.0+cpu"}, None),
     ({"torch": "2.13.0", "nvidia-cuda-runtime-cu12": "12.8.90", "sympy": "1.14"}, (12, 8)),
     ({"torch": "2.13.0", "nvidia_cuda_runtime": "13.0.48"}, (13, 0)), ({"torch": "2.13.0", "sympy": "1.1"}, None)],
)
def test_reads_the_cuda_build_from_the_label_or_the_runtime_package(tmp_path, packages, build):
    report = json.loads(_report(tmp_path, packages).read_text())
    assert torch_build.torch_build(report) == (packages["torch"], build)


@pytest.mark.parametrize(
    ("packages", "driver", "code", "text"),
    [({"torch": "2.13.0", "nvidia-cuda-runtime-cu12": "12.8.90"}, "12.8", 0, "built for CUDA 12.8; the driver runs CUDA 12.8."),
     ({"torch": "2.13.0", "nvidia-cuda-runtime-cu12": "12.8.90"}, "12.4", 0, "minor-version compatibility"),
     ({"torch": "2.13.0", "nvidia-cuda-runtime": "13.0.48"}, "12.4", 3, "set LORA3D_TORCH_INDEX to a PyTorch wheel index for CUDA 12.x"),
     ({"torch": "2.13.0+cpu"}, "12.4", 0, "a CPU build, although an NVIDIA driver (CUDA 12.4)"),
     ({"torch": "2.5.1+cu121"}, "", 0, "driver's CUDA version is unknown")],
)
def test_verdict_and_message(tmp_path, capsys, packages, driver, code, text):
    assert torch_build.main([str(_report(tmp_path, packages)), "--driver-cuda", driver]) == code
    assert text in capsys.readouterr().out


def test_a_report_without_torch_is_exit_2(tmp_path, capsys):
    assert torch_build.main([str(_report(tmp_path, {"sympy": "1.14"}))]) == 2
    assert "could not read which torch" in capsys.readouterr().out


def test_quickstart_reads_the_torch_version_without_importing_torch(tmp_path):
    """On a fresh clone torch is installed with --no-deps first; importing it then fails (no typing_extensions),
    so quickstart must read the version it pins the dependencies to from the package metadata."""
    import re
    import subprocess
    import sys

    text = (REPO / "quickstart.sh").read_text()
    function = re.search(r"^install_torch_deps\(\) \{.*?^\}", text, re.S | re.M).group(0)
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("raise ImportError('No module named typing_extensions')\n")
    (site / "torch-2.13.0+cpu.dist-info").mkdir()
    (site / "torch-2.13.0+cpu.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
    script = f'PY={sys.executable}\nPIP=(echo pip-install)\n{function}\ninstall_torch_deps\n'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pip-install torch==2.13.0+cpu"
