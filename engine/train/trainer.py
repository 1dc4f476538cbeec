"""Provides the family-agnostic trainer: setup, train, save, cleanup, on accelerate.

Reads top to bottom: `setup` builds one thing per `_setup_*`; `_train` runs steps (forward, backward,
step) and answers stop/save requests; `_save_*` writes checkpoints and adapters; `_cleanup` closes. The
family supplies the model, data, the loss of one micro-batch and evaluation; the ideas the trainer uses
each live in their own module (`accelerator`, `run_dir`, `control`, `stream`, `step`, `oom`, `resume`,
`evaluation`, `previews`, `saving`, `state`). Previews are drawn before the first step (the base) and after
every evaluation.
Only the main process writes the run directory.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed
from torch import nn

from engine.errors import DataError, Lora3dError, ProfileError
from engine.families.base import Recipe
from engine.lora.inject import apply_lora_spec
from engine.train import batching, evaluation
from engine.train.accelerator import build_accelerator
from engine.train.checkpoint import prune_checkpoints, resume_advice, save_checkpoint
from engine.train.control import RunControl
from engine.train.events import EventLog
from engine.train.guards import LossWatchdog, check_gradient_flow
from engine.train.identity import run_identity
from engine.train.lock import LOCK_FILE, RunLock
from engine.train.log_events import family_logs_as_events
from engine.train.oom import is_oom, shrink_after_oom
from engine.train.optimizer import build_optimizer
from engine.train.params import trainable_summary
from engine.train.previews import Previewer
from engine.train.resume import resume_run
from engine.train.run_dir import check_run_dir, prepare_run_dir, write_resolved_profile
from engine.train.saving import save_adapter
from engine.train.state import TrainState
from engine.train.step import StepResult, forward_backward, peak_memory_bytes
from engine.train.stream import StepStream
from engine.write_errors import TRAIN_ELSEWHERE, write_error, write_error_within

Listener = Callable[[dict[str, Any]], None]


@dataclass
class TrainerHooks:
    """Test and tooling seams; each is called with the trainer and returns nothing.

    Attributes:
        before_micro_batch: before each micro-batch's forward, with its dataset indices.
        after_step: after each optimizer step (`trainer.state.step` is the step just done).
        after_eval: after each evaluation, with its metrics.
    """

    before_micro_batch: Callable[[Trainer, list[int]], None] | None = None
    after_step: Callable[[Trainer], None] | None = None
    after_eval: Callable[[Trainer, dict[str, float]], None] | None = None


@dataclass
class RunResult:
    status: str
    """completed | stopped | failed"""
    step: int
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


class Trainer:
    """One training run of a recipe into a run directory.

    Args:
        recipe: the resolved profile.
        run_dir: where the run writes; default `output.dir`.
        resume: continue from the newest complete checkpoint in `run_dir`.
        hooks: test and tooling seams (`TrainerHooks`).
        install_signal_handlers: Ctrl-C / SIGTERM stop the run at the next step boundary.
        listeners: called with every event as it is written (the headless display).
        prepare: runs before the model is built, with a `say(message)` into the event log (prerequisites).
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path | None = None,
        resume: bool = False,
        hooks: TrainerHooks | None = None,
        install_signal_handlers: bool = True,
        listeners: list[Listener] | None = None,
        prepare: Callable[[Recipe, Callable[[str], None]], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.profile = recipe.profile
        self.family = recipe.family
        self.run_dir = Path(run_dir or recipe.profile.output.dir)
        self.resume = resume
        self.hooks = hooks or TrainerHooks()
        self.install_signal_handlers = install_signal_handlers
        self.listeners = listeners or []
        self.prepare = prepare
        self.control = RunControl(self.run_dir)
        self.losses: list[float] = []
        self.events: EventLog | None = None
        self.is_main = True
        self._stream: StepStream | None = None
        self._lock: RunLock | None = None
        self._last_checkpoint: tuple[dict[str, Any], Path] | None = None
        self._steps_limit: int | None = None
        self.previewer: Previewer | None = None

    # ------------------------------------------------------------------ public
    @property
    def stop_reason(self) -> str | None:
        return self.control.stop_reason

    @stop_reason.setter
    def stop_reason(self, reason: str | None) -> None:
        self.control.stop_reason = reason

    def request_stop(self, reason: str) -> None:
        """Ends the run at the next step boundary, as a STOP file would."""
        self.control.request_stop(reason)

    @property
    def samples_per_step(self) -> int:
        return self.state.samples_per_step(self.num_processes)

    def events_emit(self, type: str, **fields: Any) -> None:
        if self.events is not None and self.is_main:
            self.events.emit(type, **fields)

    def run(self, steps: int | None = None) -> RunResult:
        """Sets up, trains, saves and cleans up; returns how the run ended (errors are raised after the
        `error` and `end` events are written).

        A completed run writes `adapter/`; a stopped one (signal, STOP file, `request_stop`) writes its last
        step's adapter there too, marked `partial` in its metadata and in the `end` event, and can be resumed.

        Args:
            steps: train at most this many steps in this call, then stop as a STOP file would (the schedule
                stays the recipe's: `--resume` continues it); None runs to the end.
        """
        self._steps_limit = steps
        try:
            self.setup()
            if self.install_signal_handlers:
                self.control.install_signal_handlers()
            status = self._train()
            self._save_adapter(self.run_dir / "adapter", partial=status == "stopped")
            self._end_event(status)
            return RunResult(status, self.state.step, self.run_dir, self._final_metrics(), self.losses)
        except BaseException as exc:
            error = self._disk_error(exc)
            self._failure_events(error or exc)
            if error is not None:
                raise error from None
            raise
        finally:
            self.control.restore_signal_handlers()
            self._cleanup()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        profile = self.profile
        self.accelerator = build_accelerator(profile, self.run_dir)
        self.is_main = self.accelerator.is_main_process
        self.num_processes = self.accelerator.num_processes
        self.process_index = self.accelerator.process_index
        self._setup_run_dir()
        self.events = self._setup_events()
        set_seed(profile.train.seed)
        for note in self.recipe.notes:
            self.events_emit("info", message=note)
        if self.prepare is not None and self.is_main:
            self.prepare(self.recipe, lambda message: self.events_emit("info", message=message))
        self.accelerator.wait_for_everyone()
        self.events_emit("info", message=f"building the {profile.model.family} model and loading its base weights")
        self.model = self._setup_model()
        for note in getattr(self.model, "lora3d_notes", []):
            self.events_emit("warning", message=note)
        self.events_emit("info", message="loading data")
        with family_logs_as_events(self.events_emit):  # e.g. the progress of indexing a large split
            self.train_ds, self.val_ds = self._setup_data()
        self.state = self._setup_state()
        self.steps_per_epoch = batching.steps_per_epoch(len(self.train_ds), self.samples_per_step)
        self.total_steps = profile.train.max_steps or (profile.train.epochs or 1) * self.steps_per_epoch
        self.optimizer, self.scheduler = build_optimizer(self.model, profile.train, self.total_steps)
        self.identity = run_identity(self.recipe, self.model, self.train_ds, self.num_processes)
        resumed_from = self._setup_resume()
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        device = self.accelerator.device
        self._rng_devices = [device] if device.type == "cuda" else []
        self._setup_trackers()
        self.previewer = self._setup_previews()
        self.watchdog = LossWatchdog(spike_factor=profile.train.loss_spike_factor, ema=self.state.loss_ema)
        self._start_event(resumed_from)
        for note in self.previewer.notes if self.previewer is not None else []:
            self.events_emit("info", message=note)

    def _setup_run_dir(self) -> None:
        """Refuses a wrong run directory before writing anything; then (main process) takes its lock for the
        run's life, tidies a killed run's leftovers and writes `profile.resolved.yaml` (a resume writes it once
        its checkpoint is accepted, so a refused resume leaves the run's own)."""
        check_run_dir(self.run_dir, self.resume)
        if not self.is_main:
            return
        self._lock, cleanup = prepare_run_dir(self.run_dir)
        self._recovered = cleanup.recovered
        try:
            self.control.clear_files()
        except OSError as exc:
            raise write_error(self.run_dir, exc, "a STOP/SAVE file could not be removed", then="then rerun",
                              elsewhere=TRAIN_ELSEWHERE) from None
        if not self.resume:
            write_resolved_profile(self.recipe, self.run_dir)

    def _setup_events(self) -> EventLog:
        events = EventLog(self.run_dir / "events.jsonl", enabled=self.is_main, then=self._resume_advice)
        events.listeners.extend(self.listeners if self.is_main else [])
        for path in getattr(self, "_recovered", []):
            events.emit("info", message=f"recovered {path}: a complete save that a killed run had not finished "
                                        "renaming into place")
        return events

    def _setup_model(self) -> nn.Module:
        model = self.family.build_model(self.recipe)
        model = apply_lora_spec(model, self.recipe.lora)
        if self.profile.train.gradient_checkpointing:
            self.family.set_gradient_checkpointing(model, True)
        if not any(p.requires_grad for p in model.parameters()):
            raise ProfileError(
                "no trainable parameters after LoRA injection. Check `lora.target_modules` and `lora.target_stages`."
            )
        return model

    def _setup_data(self) -> tuple[Any, Any]:
        train_ds, val_ds = self.family.build_datasets(self.recipe)
        if len(train_ds) == 0:
            raise DataError(f"{self.profile.data.root or 'built-in data'}: the training split is empty. Add scenes.")
        return train_ds, val_ds

    def _setup_state(self) -> TrainState:
        train = self.profile.train
        state = TrainState.fresh(train.batch_size, train.grad_accum)
        samples_per_step = state.samples_per_step(self.num_processes)
        if samples_per_step > len(self.train_ds):
            raise DataError(
                f"{self.profile.data.root or 'built-in data'}: the training split has {len(self.train_ds)} samples, "
                f"fewer than one optimizer step uses ({samples_per_step} = `train.batch_size` x `train.grad_accum` x "
                "processes). Lower `train.batch_size` or `train.grad_accum`, or add data."
            )
        return state

    def _setup_resume(self) -> str | None:
        """Restores the newest complete checkpoint when resuming; returns its name."""
        if not self.resume:
            return None
        train = self.profile.train
        batch = {"batch_size": train.batch_size, "grad_accum": train.grad_accum, "processes": self.num_processes}
        resumed = resume_run(self.run_dir, self.identity, self.model, self.optimizer, self.scheduler, batch)
        if resumed is None:
            self.events_emit("warning", message=f"--resume: no complete checkpoint in {self.run_dir}; starting fresh")
            self._write_resolved_profile()
            return None
        self.state = resumed.state
        if resumed.note:
            self.events_emit("info", message=resumed.note)
        self._write_resolved_profile()
        return resumed.path.name

    def _setup_trackers(self) -> None:
        profile = self.profile
        if profile.output.tensorboard:
            self.accelerator.init_trackers("tb", config={
                "family": profile.model.family, "task": str(profile.model.task), "r": profile.lora.r,
                "lr": profile.train.lr, "effective_batch": self.samples_per_step,
            })

    def _setup_previews(self) -> Previewer | None:
        """The preview rounds (main process only: the pictures are the run directory's)."""
        if not self.is_main:
            return None
        writer = None
        if self.profile.output.tensorboard:
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
        return Previewer(self.recipe, self.run_dir, self.train_ds, self.val_ds, self.events_emit, writer)

    def _start_event(self, resumed_from: str | None) -> None:
        profile = self.profile
        self.events_emit(
            "start",
            run_dir=str(self.run_dir),
            name=profile.name,
            family=profile.model.family,
            task=profile.model.task,
            device=str(self.accelerator.device),
            mixed_precision=profile.train.mixed_precision,
            num_processes=self.num_processes,
            micro_batch=self.state.micro_batch,
            grad_accum=self.state.grad_accum,
            effective_batch=self.samples_per_step,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            train_samples=len(self.train_ds),
            val_samples=len(self.val_ds) if self.val_ds is not None else 0,
            resumed_from=resumed_from,
            start_step=self.state.step,
            params=trainable_summary(self.accelerator.unwrap_model(self.model)),
            pid=os.getpid(),
            lock=str(self.run_dir / LOCK_FILE) if self.is_main else None,
        )

    # ------------------------------------------------------------------ train
    def _train(self) -> str:
        """Steps until the schedule ends or a stop is requested; returns `completed` or `stopped`."""
        train = self.profile.train
        if self.state.step >= self.total_steps:
            return "completed"
        self.model.train()
        self._preview_base()
        first = self.state.step
        while self.state.step < self.total_steps:
            self._one_step()
            if self.hooks.after_step is not None:
                self.hooks.after_step(self)
            if self._steps_limit is not None and self.state.step - first >= self._steps_limit:
                self.request_stop(f"run(steps={self._steps_limit})")
            if evaluation.eval_due(self.state, train.eval_every, self.total_steps):
                self._evaluate()
            stop_file, save_file = self.control.poll_files(self.accelerator)
            last = self.state.step == self.total_steps
            if train.checkpoint_every and self.state.step % train.checkpoint_every == 0 and not last:
                self._save_checkpoint("schedule")
            elif save_file:
                self._save_checkpoint("requested")
            if save_file and self.is_main:
                self.control.done_saving()
            if (self.stop_reason or stop_file) and not last:  # a stop after the last step changes nothing
                reason = self.stop_reason or "STOP file"
                self._save_checkpoint(f"stop ({reason})")
                if self.is_main:
                    self.control.done_stopping()
                self.events_emit("info", message=f"stopped by {reason} at step {self.state.step}; resume with --resume")
                return "stopped"
        self._save_checkpoint("final")
        return "completed"

    def _one_step(self) -> None:
        """One optimizer step: forward and backward over the step's micro-batches, then the update."""
        state = self.state
        result = self._forward_backward()
        first_step = state.step == 0 and not self.resume
        warning = self.watchdog.check(result.loss, state.step + 1)  # raises on NaN/inf before any update
        if warning:
            self.events_emit("warning", message=warning, step=state.step + 1)
        if first_step and self.recipe.lora.method == "lora":  # the guard is about adapted modules
            check_gradient_flow(self.accelerator.unwrap_model(self.model))
        grad_norm = None
        if self.profile.train.max_grad_norm is not None:
            grad_norm = float(self.accelerator.clip_grad_norm_(self._trainable, self.profile.train.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used, before the schedule advances
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        epoch = state.epoch  # the epoch this step's samples came from (0-based)
        state.advance(self.samples_per_step, len(self.train_ds))
        state.loss_ema = self.watchdog.ema
        self.losses.append(result.loss)
        if state.step % self.profile.train.log_every == 0 or state.step == self.total_steps:
            self._step_event(result, epoch, lr, grad_norm)

    def _forward_backward(self) -> StepResult:
        """Runs the step's micro-batches, retrying the whole step at half the micro-batch on out-of-memory."""
        while True:
            if self._stream is None or not self._stream.serves(self.state, self.num_processes):
                self._stream = self._open_stream()
            micro_batches, batches = self._stream.take()
            t0 = time.perf_counter()
            try:
                result = forward_backward(
                    self.model, self.recipe.task, self.accelerator, micro_batches, batches, self.profile.train.seed,
                    self.state.epoch, self._rng_devices, self._before_micro_batch,
                )
                result.seconds = time.perf_counter() - t0
                return result
            except Exception as exc:
                if not (is_oom(exc) and self.profile.train.oom_recovery):
                    raise
                self._stream = None  # this step's samples are fetched again at the smaller micro-batch
                self.optimizer.zero_grad(set_to_none=True)
                self._recover_from_oom()

    def _before_micro_batch(self, indices: list[int]) -> None:
        if self.hooks.before_micro_batch is not None:
            self.hooks.before_micro_batch(self, indices)

    def _open_stream(self) -> StepStream:
        return StepStream(self.train_ds, self.state, self.profile.train.seed, self.steps_per_epoch,
                          self.num_processes, self.process_index, self.family.collate, self.profile.data.num_workers)

    def _recover_from_oom(self) -> None:
        state = self.state
        old_micro, old_accum = shrink_after_oom(state, self.recipe)
        self._write_resolved_profile()
        message = (
            f"out of memory at micro-batch {old_micro}: retrying step {state.step + 1} with micro-batch "
            f"{state.micro_batch} and grad_accum {state.grad_accum} (effective batch unchanged: "
            f"{self.samples_per_step}); profile.resolved.yaml updated"
        )
        self.events_emit("oom", step=state.step + 1, micro_batch=state.micro_batch, grad_accum=state.grad_accum,
                         previous_micro_batch=old_micro, previous_grad_accum=old_accum, message=message)
        self.events_emit("warning", message=message)

    def _step_event(self, result: StepResult, epoch: int, lr: float, grad_norm: float | None) -> None:
        state, seconds = self.state, result.seconds
        self.events_emit(
            "step",
            step=state.step,
            total_steps=self.total_steps,
            epoch=epoch,
            loss=result.loss,
            lr=lr,
            grad_norm=grad_norm,
            step_time=seconds,
            samples_per_s=result.samples * self.num_processes / seconds if seconds > 0 else None,
            tokens_per_s=result.tokens * self.num_processes / seconds if seconds > 0 else None,
            memory_bytes=peak_memory_bytes(self.accelerator.device),
            micro_batch=state.micro_batch,
            grad_accum=state.grad_accum,
            **{f"train/{k}": v for k, v in result.metrics.items()},
        )
        if self.profile.output.tensorboard:
            self.accelerator.log({"train/loss": result.loss, "train/lr": lr}, step=state.step)

    def _preview_base(self) -> None:
        """The step-0 previews (the base model, the reference of every later round); a resume keeps its own."""
        if self.previewer is None or not self.previewer.active or self.state.step > 0:
            return
        if self.previewer.exists(0):
            self.events_emit("info", message="previews of step 0 exist from an earlier start of this run; kept")
            return
        self._preview()

    def _preview(self) -> float | None:
        """A preview round of this step; returns its seconds (None when the run draws no previews)."""
        if self.previewer is None or not self.previewer.active:
            return None
        model = self.accelerator.unwrap_model(self.model)
        return self.previewer.run(model, self.state.step, self.accelerator.autocast()).seconds

    def _evaluate(self) -> None:
        """Evaluates, tracks the best metric (writing `adapter-best/` on improvement), draws previews and says so."""
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluation.evaluate(model, self.recipe.task, self.val_ds, self.state.micro_batch, self.accelerator,
                                      self.family.collate, self.profile.data.num_workers)
        preview_seconds = self._preview()
        if not metrics:
            return
        improved = evaluation.record_best(self.state, self.recipe.task, metrics)
        if improved:
            self._save_adapter(self.run_dir / "adapter-best")
        self.events_emit("eval", step=self.state.step, metrics=metrics, primary=self.recipe.task.primary_metric,
                         best=self.state.best_metric, best_step=self.state.best_step, improved=improved,
                         preview_seconds=preview_seconds)
        if self.profile.output.tensorboard:
            self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.state.step)
        if self.hooks.after_eval is not None:
            self.hooks.after_eval(self, metrics)

    # ------------------------------------------------------------------ save
    def _save_checkpoint(self, reason: str) -> None:
        """Writes a checkpoint of this step (or names the one just written, when nothing changed since)."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        saved = self._last_checkpoint
        if saved is not None and saved[0] == self.state.to_dict() and saved[1].is_dir():
            self.events_emit("checkpoint", step=self.state.step, path=str(saved[1]), reason=reason)
            return
        model = self.accelerator.unwrap_model(self.model)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        train = self.profile.train
        extra = {"reason": reason, "num_processes": self.num_processes, "batch_size": train.batch_size,
                 "grad_accum": train.grad_accum}
        path = save_checkpoint(self.checkpoint_root, self.state, trainable, self.optimizer.state_dict(),
                               self.scheduler.state_dict(), self.identity, extra=extra)
        self._last_checkpoint = (self.state.to_dict(), path)
        prune_checkpoints(self.checkpoint_root, train.keep_last)
        self.events_emit("checkpoint", step=self.state.step, path=str(path), reason=reason)

    def _save_adapter(self, folder: Path, partial: bool = False) -> None:
        """Writes the adapter of this step; `partial` marks a stopped run's (its metadata says so)."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        profile = self.profile
        metadata = {
            "family": profile.model.family,
            "task": profile.model.task,
            "pretrained": str(profile.model.pretrained) if profile.model.pretrained else None,
            "step": self.state.step,
            "total_steps": self.total_steps,
            "partial": partial,
            "profile_name": profile.name,
        }
        save_adapter(self.accelerator.unwrap_model(self.model), folder, self.family, self.recipe.lora.method, metadata,
                     then=self._resume_advice())

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def _resume_advice(self) -> str:
        return resume_advice(self.checkpoint_root)

    def _write_resolved_profile(self) -> None:
        if self.is_main:
            write_resolved_profile(self.recipe, self.run_dir, self.state)

    def _final_metrics(self) -> dict[str, float]:
        best = self.state.best_metric
        return {"best_" + self.recipe.task.primary_metric: best} if best is not None else {}

    def _end_event(self, status: str) -> None:
        self.events_emit("end", status=status, step=self.state.step, final_loss=self.losses[-1] if self.losses else None,
                         best_metric=self.state.best_metric, best_step=self.state.best_step,
                         adapter=str(self.run_dir / "adapter"), partial=status != "completed")

    def _disk_error(self, exc: BaseException) -> Lora3dError | None:
        """A full disk or read-only folder met by a write in the run directory that no writer above translated
        (e.g. inside a tracker): the message every writer gives, instead of a traceback."""
        return write_error_within(self.run_dir, exc, then=self._resume_advice(), elsewhere=TRAIN_ELSEWHERE)

    def _failure_events(self, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, Lora3dError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Lora3dError):  # the log itself may be what failed (a full disk)
            self.events_emit("error", message=message, kind=type(exc).__name__)
            self.events_emit("end", status="failed", step=getattr(getattr(self, "state", None), "step", 0))

    # ------------------------------------------------------------------ cleanup
    def _cleanup(self) -> None:
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and self.profile.output.tensorboard:
            with contextlib.suppress(Exception):
                accelerator.end_training()
        if self.events is not None:
            self.events.close()
        if self._lock is not None:
            self._lock.release()  # the last thing: the run directory is consistent when the next process enters
            self._lock = None


def train(recipe: Recipe, run_dir: Path | None = None, resume: bool = False, **kwargs: Any) -> RunResult:
    """Runs a training job described by `recipe`; see Trainer."""
    return Trainer(recipe, run_dir=run_dir, resume=resume, **kwargs).run()
