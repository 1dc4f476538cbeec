"""Provides the run's training state: position in the data, the micro-batch split, best-metric tracking.

`TrainState` is the only owner of the micro-batch split (`micro_batch` x `grad_accum` x processes = the
effective batch). OOM recovery and resume change the split here and nowhere else; the profile stays as
resolved, and `profile.resolved.yaml` is the recipe written out with this state's split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainState:
    """Everything besides tensors needed to continue a run exactly where it stopped."""

    step: int
    epoch: int
    epoch_sample: int
    """Samples of the current epoch already consumed (on all processes)."""
    micro_batch: int
    grad_accum: int
    best_metric: float | None = None
    best_step: int | None = None
    loss_ema: float | None = None

    @classmethod
    def fresh(cls, micro_batch: int, grad_accum: int) -> TrainState:
        return cls(step=0, epoch=0, epoch_sample=0, micro_batch=micro_batch, grad_accum=grad_accum)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """The state a checkpoint manifest recorded (unknown keys from newer versions are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def samples_per_step(self, num_processes: int) -> int:
        """The effective batch: samples one optimizer step consumes on all processes together."""
        return self.micro_batch * self.grad_accum * num_processes

    def halve_micro_batch(self) -> tuple[int, int]:
        """Halves the micro-batch and doubles accumulation (the effective batch is unchanged); returns the
        previous (micro_batch, grad_accum). The caller checks `micro_batch > 1` first."""
        previous = (self.micro_batch, self.grad_accum)
        self.micro_batch //= 2
        self.grad_accum *= 2
        return previous

    def split_for(self, micro_batch: int, effective_batch: int, num_processes: int) -> None:
        """Takes the split `micro_batch` x accumulation for `effective_batch` on `num_processes` processes.

        Raises:
            ValueError: `micro_batch` x processes does not divide the effective batch.
        """
        per_process, rest = divmod(effective_batch, num_processes)
        if rest or per_process % micro_batch:
            raise ValueError(f"micro-batch {micro_batch} x {num_processes} processes does not divide {effective_batch}")
        self.micro_batch = micro_batch
        self.grad_accum = per_process // micro_batch

    def advance(self, samples_per_step: int, epoch_size: int) -> None:
        """Counts one finished optimizer step; a new epoch starts when the next step would not fit (drop_last)."""
        self.step += 1
        self.epoch_sample += samples_per_step
        if self.epoch_sample + samples_per_step > epoch_size:
            self.epoch += 1
            self.epoch_sample = 0
