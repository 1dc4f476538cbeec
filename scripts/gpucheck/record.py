"""Provides the records of the GPU check: the run's context, one `Check` per judged quantity, a `Section`.

Statuses, and what they mean for the exit code:
- `pass`: measured and within its tolerance;
- `fail`: broken (an exception, a mismatch beyond tolerance, a non-finite loss, a missing file): exit 1;
- `miss`: a goal (memory estimate within 10%, a speed ratio) not met: reported, exit 1 only with
  `--strict-goals`, because a goal is a calibration target rather than a correctness check;
- `skip`: not run, with the reason (no spconv, fp16 on a CPU, the time budget spent);
- `info`: a measurement with no judgement (versions, timings, CPU numbers in a dry run).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("pass", "fail", "miss", "skip", "info")


@dataclass(frozen=True)
class Context:
    """What every section knows about the run.

    Attributes:
        device: "cuda" or "cpu" (a dry run is always "cpu").
        dry_run: tiny sizes on the CPU, to prove the script works.
        out_dir: the report folder; sections keep their run folders under `work/` in it.
        repo: the repository root.
        deadline: `time.time()` by which the section must be done (its own timeout, set by the driver).
        options: the driver's tuning options (`dit_instances`, ...).
    """

    device: str
    dry_run: bool
    out_dir: Path
    repo: Path
    deadline: float
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        return self.out_dir / "work"

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"], out["repo"] = str(self.out_dir), str(self.repo)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Context:
        return cls(data["device"], bool(data["dry_run"]), Path(data["out_dir"]), Path(data["repo"]),
                   float(data["deadline"]), dict(data.get("options") or {}))


@dataclass
class Check:
    """One judged quantity: its status, a one-line detail and the numbers behind it."""

    name: str
    status: str
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status  # internal invariant: sections use the constants


@dataclass
class Section:
    """The checks of one section, in the order they were made."""

    name: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    """Section-wide facts for the report header (device, versions)."""
    path: Path | None = None
    """Where the section is written after every check, so a section stopped by its timeout still reports."""

    def add(self, name: str, status: str, detail: str = "", **values: Any) -> Check:
        check = Check(name, status, detail, {k: _plain(v) for k, v in values.items()})
        self.checks.append(check)
        if self.path is not None:
            self.write(self.path)
        return check

    def judge(self, name: str, ok: bool, detail: str = "", **values: Any) -> Check:
        """A pass/fail check."""
        return self.add(name, "pass" if ok else "fail", detail, **values)

    @contextlib.contextmanager
    def guard(self, name: str) -> Iterator[None]:
        """Turns an exception inside the block into a `fail` check named `name`, so the section goes on."""
        try:
            yield
        except Exception as exc:  # any breakage is a finding, reported with its last frames
            tail = traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]
            self.add(name, "fail", f"{type(exc).__name__}: {exc}"[:400], traceback="".join(tail)[-1500:])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "facts": self.facts, "checks": [asdict(c) for c in self.checks]}

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=str))
        tmp.replace(path)


def _plain(value: Any) -> Any:
    """JSON-friendly numbers: floats rounded to 6 significant digits, NaN/inf as strings."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def errors(got: Any, ref: Any) -> dict[str, float]:
    """Max absolute and relative L2 error of `got` against `ref`, in float64 on the CPU."""
    a = got.detach().to("cpu").double()
    b = ref.detach().to("cpu").double()
    if a.shape != b.shape:
        raise ValueError(f"shape {tuple(a.shape)} != reference {tuple(b.shape)}")
    diff = a - b
    norm = float(b.norm())
    return {"max_abs": float(diff.abs().max()) if diff.numel() else 0.0,
            "rel_l2": float(diff.norm()) / norm if norm > 0 else float(diff.norm()),
            "finite": bool(a.isfinite().all())}


def close(got: Any, ref: Any, atol: float, rtol: float) -> tuple[bool, dict[str, float]]:
    """assert_close's rule (`|a - b| <= atol + rtol |b|` everywhere) with the errors for the report."""
    err = errors(got, ref)
    a = got.detach().to("cpu").double()
    b = ref.detach().to("cpu").double()
    ok = bool(err["finite"]) and bool(((a - b).abs() <= atol + rtol * b.abs()).all())
    return ok, err
