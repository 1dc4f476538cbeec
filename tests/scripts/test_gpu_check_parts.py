"""The GPU check's parts that need no run: report rules, the injected faults, the wheel repacking."""

from __future__ import annotations

import signal
import subprocess
import sys
import zipfile

import pytest
import torch

from tests.conftest import REPO

SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from gpucheck import faults, pack_wheels  # noqa: E402
from gpucheck import report as gpu_report  # noqa: E402
from gpucheck.record import Section, close, errors  # noqa: E402


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [(["pass", "info", "fail"], "fail"), (["pass", "miss"], "miss"), (["info", "pass", "skip"], "pass"),
     (["skip", "info"], "skip"), (["info"], "info")],
)
def test_section_status_is_the_worst_judged_one(statuses, expected):
    assert gpu_report.section_status([{"status": s} for s in statuses]) == expected


def _report(*statuses: str) -> dict:
    sections = [{"name": "s", "status": gpu_report.section_status([{"status": s} for s in statuses]), "seconds": 1.0,
                 "cpu_s": 1.0, "note": "", "checks": [{"name": f"c{i} | x", "status": s, "detail": "a|b", "values": {}}
                                                      for i, s in enumerate(statuses)]}]
    report = {"sections": sections, "counts": gpu_report.counts(sections), "device": "GPU", "mode": "cuda",
              "seconds": 3.0, "started_utc": "now", "git": "abc", "command": "python scripts/gpu_check.py",
              "software": "torch"}
    return report


def test_exit_code_fails_on_fail_and_on_miss_only_when_strict():
    assert gpu_report.exit_code(_report("pass", "fail"), strict_goals=False) == 1
    assert gpu_report.exit_code(_report("pass", "miss", "skip"), strict_goals=False) == 0
    assert gpu_report.exit_code(_report("pass", "miss"), strict_goals=True) == 1


def test_markdown_names_the_verdict_and_escapes_cells(tmp_path):
    report = _report("pass", "fail")
    report["exit_code"] = 1
    json_path, md_path = gpu_report.write_report(tmp_path, report)
    md = md_path.read_text()
    assert md.startswith("# lora3d GPU check: FAILED") and "1 pass, 1 fail, 0 miss" in md
    assert "| c1 \\| x | fail | a\\|b |" in md
    assert json_path.is_file() and not list(tmp_path.glob("*.tmp"))


def test_section_guard_turns_an_exception_into_a_failure_and_goes_on(tmp_path):
    section = Section("s", path=tmp_path / "s.json")
    with section.guard("broken"):
        raise ValueError("bad shape")
    section.judge("after", True, "still runs", x=float("nan"))
    assert [c.status for c in section.checks] == ["fail", "pass"]
    assert "ValueError: bad shape" in section.checks[0].detail
    assert '"x": "nan"' in (tmp_path / "s.json").read_text()  # written after every check, NaN kept as text


def test_errors_and_close_follow_assert_close():
    ref = torch.tensor([1.0, -2.0, 4.0])
    ok, err = close(ref + torch.tensor([0.0, 1e-5, 0.0]), ref, atol=2e-5, rtol=0.0)
    assert ok and err["max_abs"] == pytest.approx(1e-5, rel=0.05)
    assert not close(ref + 1e-3, ref, atol=2e-5, rtol=2e-5)[0]
    assert not errors(torch.tensor([float("nan"), 1.0, 1.0]), ref)["finite"]


def test_activation_meter_raises_cuda_oom_above_its_cap_in_training_forwards_only():
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    with faults.ActivationMeter() as meter:
        model(torch.randn(4, 8))
    one = meter.peak
    assert one > 4 * 64 * 4  # the hidden activations and outputs of a batch of 4 were counted
    with faults.ActivationMeter(cap_bytes=int(1.5 * one)):
        model(torch.randn(4, 8))  # fits
        with torch.no_grad():
            model(torch.randn(16, 8))  # evaluation is not counted
        with pytest.raises(torch.OutOfMemoryError, match="emulated on the CPU"):
            model(torch.randn(8, 8))
        model(torch.randn(4, 8))  # the next forward starts from zero again
    model(torch.randn(64, 8))  # the hooks are gone


def test_interrupt_after_sends_sigint_after_the_nth_optimizer_step():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        weight = torch.nn.Parameter(torch.ones(2))
        optimizer = torch.optim.SGD([weight], lr=0.1)
        with faults.interrupt_after(2):
            for step in range(1, 4):
                weight.sum().backward()
                optimizer.step()
                if step == 1:
                    assert seen == []
            assert seen == [signal.SIGINT]
        optimizer.step()
        assert seen == [signal.SIGINT]  # the hook is removed
    finally:
        signal.signal(signal.SIGINT, previous)


def _tiny_wheel(folder):
    path = folder / "gpucheck_demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("gpucheck_demo.py", "VALUE = 42\n" + "# padding\n" * 500)
        zf.writestr("gpucheck_demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: gpucheck-demo\nVersion: 1.0\n")
        zf.writestr("gpucheck_demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                    "Tag: py3-none-any\n")
        zf.writestr("gpucheck_demo-1.0.dist-info/RECORD", "")
    return path


def test_repacked_wheel_is_lzma_with_the_same_contents_and_pip_installs_it(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir()
    wheel = _tiny_wheel(src)
    assert pack_wheels.main([str(src), str(dest)]) == 0
    packed = dest / wheel.name
    with zipfile.ZipFile(packed) as new, zipfile.ZipFile(wheel) as old:
        assert [i.filename for i in new.infolist()] == [i.filename for i in old.infolist()]
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in new.infolist())
        assert all(new.read(n) == old.read(n) for n in old.namelist())
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", str(target), str(packed)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "VALUE = 42" in (target / "gpucheck_demo.py").read_text()


def test_size_check_counts_the_tree_against_one_call(tmp_path, capsys):
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "a.whl").write_bytes(b"x" * 1000)
    assert pack_wheels.main(["--size", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "MiB of tree" in out and "fits one device call (64 MiB)" in out
    (folder / "big.whl").write_bytes(b"\0" * pack_wheels.CALL_LIMIT)
    assert pack_wheels.main(["--size", str(folder)]) == 1
    assert "does NOT fit" in capsys.readouterr().out
