"""Provides the family-agnostic trainer: setup, train, save, cleanup, on accelerate.

Reads top to bottom: `_setup_*` builds one thing each; `_train` runs steps (forward, backward, step);
`_save_*` writes checkpoints and adapters; `_cleanup` closes. The family supplies the model, LoRA, data,
the loss of one micro-batch and evaluation. Only the main process writes the run directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors.torch import save_file
from torch import nn

from engine import seeding
from engine.atomic import replace_folder
from engine.errors import CheckpointError, DataError, HardwareError, Lora3dError, ProfileError
from engine.families.base import Recipe
from engine.lora.inject import apply_lora_spec
from engine.profile import save_profile_data
from engine.train import batching
from engine.train.checkpoint import (
    TrainState,
    clean_partial,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    restore_rng,
    save_checkpoint,
)
from engine.train.events import EventLog
from engine.train.guards import LossWatchdog, check_gradient_flow
from engine.train.identity import identity_differences, run_identity


def is_oom(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's failure message."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


class _StepStream:
    """This process's micro-batches from one step to the end of an epoch, through ONE DataLoader.

    One loader per epoch (not per step) lets `data.num_workers` prefetch across steps; the trainer drops the
    stream and builds a new one when the epoch or the micro-batch changes (OOM recovery) or on resume.
    """

    def __init__(self, trainer: Trainer, step_in_epoch: int) -> None:
        state = trainer.state
        self.key = (state.epoch, state.micro_batch, state.grad_accum)
        self.next_step = step_in_epoch
        if hasattr(trainer.train_ds, "set_epoch"):
            trainer.train_ds.set_epoch(state.epoch)
        perm = batching.epoch_permutation(len(trainer.train_ds), trainer.profile.train.seed, state.epoch)
        self.schedule = [
            batching.step_micro_batches(perm, s, state.micro_batch, state.grad_accum, trainer.num_processes,
                                        trainer.process_index)
            for s in range(step_in_epoch, trainer.steps_per_epoch)
        ]
        self._batches = iter(trainer._loader([mb for step in self.schedule for mb in step], trainer.train_ds))

    def take(self) -> tuple[list[list[int]], Any]:
        """The next step's micro-batch indices and a lazy iterator over their collated batches."""
        micro_batches = self.schedule.pop(0)
        self.next_step += 1
        return micro_batches, (next(self._batches) for _ in micro_batches)


@dataclass
class TrainerHooks:
    """Test and tooling seams; each is called with the trainer and returns nothing."""

    before_micro_batch: Callable[[Trainer, list[int]], None] | None = None
    after_step: Callable[[Trainer], None] | None = None


@dataclass
class RunResult:
    status: str
    """completed | stopped | failed"""
    step: int
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def save_full_model(model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
    """`lora.method: full` has no adapter: the folder holds every weight (`model.safetensors`) and the metadata."""
    folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "lora3d_metadata.json").write_text(json.dumps({**metadata, "method": "full"}, indent=2))


def _lr_lambda(warmup: int, total: int, kind: str) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path | None = None,
        resume: bool = False,
        hooks: TrainerHooks | None = None,
        install_signal_handlers: bool = True,
        listeners: list[Callable[[dict[str, Any]], None]] | None = None,
        prepare: Callable[[Recipe, Callable[[str], None]], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.profile = recipe.profile
        self.run_dir = Path(run_dir or recipe.profile.output.dir)
        self.resume = resume
        self.family = recipe.family
        self.hooks = hooks or TrainerHooks()
        self.install_signal_handlers = install_signal_handlers
        self.stop_reason: str | None = None
        self.losses: list[float] = []
        self.events: EventLog | None = None
        self.listeners = listeners or []
        self.prepare = prepare
        """Runs before the model is built, with a `say(message)` into the event log (prerequisites)."""

    # ------------------------------------------------------------------ setup
    def _setup_accelerator(self):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        train = self.profile.train
        want_cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
        if train.device == "cuda" and not torch.cuda.is_available():
            raise HardwareError(
                "`train.device` is cuda but no CUDA GPU is visible. Set `train.device: auto` or `cpu`, "
                "or check `lora3d probe`."
            )
        if train.mixed_precision == "fp16" and not want_cuda:
            raise HardwareError(
                "`train.mixed_precision` fp16 needs a CUDA GPU, and this run is on the CPU (it would silently "
                "run in fp32). Use `--set train.mixed_precision=bf16` or `train.mixed_precision=no`."
            )
        if "WORLD_SIZE" not in os.environ:
            # One process: a previous run in this interpreter (tests, the wizard's probe) may have set
            # accelerate's global state to other settings.
            AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(
            mixed_precision=train.mixed_precision,
            cpu=not want_cuda,
            log_with="tensorboard" if self.profile.output.tensorboard else None,
            project_dir=str(self.run_dir / "tb"),
        )
        return accelerator

    def _setup_run_dir(self) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ProfileError(
                f"{self.run_dir}: `output.dir` names an existing file, not a folder. Choose another run directory "
                "(`--out NEW_DIR`); the file was left untouched."
            )
        ckpt_root = self.run_dir / "checkpoints"
        existing = list_checkpoints(ckpt_root)
        if existing and not self.resume:
            raise ProfileError(
                f"{self.run_dir}: this run directory already holds checkpoints ({existing[-1].name}). "
                "Pass --resume to continue it, or --out NEW_DIR (or `output.dir`) for a new run; nothing was changed."
            )
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            clean_partial(ckpt_root)
            for name in ("STOP", "SAVE"):
                (self.run_dir / name).unlink(missing_ok=True)
            self._write_resolved_profile()

    def _write_resolved_profile(self) -> None:
        """The recipe written out, with the run-time micro-batch split (after OOM recovery) in `train`."""
        if self.is_main:
            data = self.profile.to_yaml_dict()
            state = getattr(self, "state", None)
            if state is not None:
                data["train"].update(batch_size=state.micro_batch, grad_accum=state.grad_accum)
            save_profile_data(
                data,
                self.run_dir / "profile.resolved.yaml",
                header="The profile this run actually used (overrides and run-time changes applied).\n"
                f"Rerun: lora3d train {self.run_dir / 'profile.resolved.yaml'} --out NEW_DIR",
            )

    def _setup_model(self) -> nn.Module:
        model = self.family.build_model(self.recipe)
        model = apply_lora_spec(model, self.recipe.lora)
        if self.profile.train.gradient_checkpointing:
            self.family.set_gradient_checkpointing(model, True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ProfileError(
                "no trainable parameters after LoRA injection. Check `lora.target_modules` and `lora.target_stages`."
            )
        return model

    def _setup_data(self):
        train_ds, val_ds = self.family.build_datasets(self.recipe)
        if len(train_ds) == 0:
            raise DataError(f"{self.profile.data.root or 'built-in data'}: the training split is empty. Add scenes.")
        return train_ds, val_ds

    def _setup_optimizer(self, model: nn.Module):
        train = self.profile.train
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(train.warmup_steps, self.total_steps, train.scheduler)
        )
        return optimizer, scheduler

    def setup(self) -> None:
        profile = self.profile
        self.accelerator = self._setup_accelerator()
        self.is_main = self.accelerator.is_main_process
        self.num_processes = self.accelerator.num_processes
        self.process_index = self.accelerator.process_index
        self._setup_run_dir()
        self.events = EventLog(self.run_dir / "events.jsonl", enabled=self.is_main)
        self.events.listeners.extend(self.listeners if self.is_main else [])
        from accelerate.utils import set_seed

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
        self.train_ds, self.val_ds = self._setup_data()

        self.state = TrainState(
            step=0, epoch=0, epoch_sample=0, micro_batch=profile.train.batch_size, grad_accum=profile.train.grad_accum
        )
        samples_per_step = self.samples_per_step
        if samples_per_step > len(self.train_ds):
            raise DataError(
                f"{profile.data.root or 'built-in data'}: the training split has {len(self.train_ds)} samples, fewer than "
                f"one optimizer step uses ({samples_per_step} = `train.batch_size` x `train.grad_accum` x processes). "
                "Lower `train.batch_size` or `train.grad_accum`, or add data."
            )
        self.steps_per_epoch = batching.steps_per_epoch(len(self.train_ds), samples_per_step)
        self.total_steps = profile.train.max_steps or (profile.train.epochs or 1) * self.steps_per_epoch
        self.optimizer, self.scheduler = self._setup_optimizer(self.model)
        self.identity = run_identity(self.recipe, self.model, self.train_ds)
        resumed_from = self._maybe_resume()
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._stream: _StepStream | None = None
        device = self.accelerator.device
        self._rng_devices = [device] if device.type == "cuda" else []
        if profile.output.tensorboard:
            self.accelerator.init_trackers(
                "tb",
                config={
                    "family": profile.model.family,
                    "task": str(profile.model.task),
                    "r": profile.lora.r,
                    "lr": profile.train.lr,
                    "effective_batch": profile.effective_batch,
                },
            )
        self.watchdog = LossWatchdog(spike_factor=profile.train.loss_spike_factor, ema=self.state.loss_ema)
        self._start_event(resumed_from)

    def _maybe_resume(self) -> str | None:
        if not self.resume:
            return None
        ckpts = list_checkpoints(self.run_dir / "checkpoints")
        if not ckpts:
            if self.is_main:
                self.events_emit("warning", message=f"--resume: no complete checkpoint in {self.run_dir}; starting fresh")
            return None
        ckpt = load_checkpoint(ckpts[-1])
        diffs = identity_differences(ckpt.identity, self.identity)
        if diffs:
            raise CheckpointError(
                f"{ckpt.path}: this checkpoint was made by a different setup and cannot be resumed here:\n  "
                + "\n  ".join(diffs)
                + "\nResume with the profile the run used (its profile.resolved.yaml), or start a new run with --out."
            )
        unwrapped = self.model
        missing = [n for n, p in unwrapped.named_parameters() if p.requires_grad and n not in ckpt.trainable]
        if missing:
            raise CheckpointError(f"{ckpt.path}: checkpoint lacks trainable tensors {missing[:3]}. Delete it to resume from the one before.")
        with torch.no_grad():
            params = dict(unwrapped.named_parameters())
            for name, tensor in ckpt.trainable.items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.scheduler.load_state_dict(ckpt.scheduler_state)
        restore_rng(ckpt.rng_tensors, ckpt.rng_plain)
        # The effective batch must survive a change of process count: keep the (possibly OOM-reduced)
        # micro-batch and re-derive accumulation.
        saved = ckpt.state
        saved_procs = int(ckpt.extra.get("num_processes", 1))
        effective = saved.micro_batch * saved.grad_accum * saved_procs
        per_process, rest = divmod(effective, self.num_processes)
        if rest or per_process % saved.micro_batch:
            raise CheckpointError(
                f"{ckpt.path}: the run's effective batch {effective} cannot be split over {self.num_processes} "
                f"processes with micro-batch {saved.micro_batch}. Use a process count that divides it."
            )
        saved.grad_accum = per_process // saved.micro_batch
        self.state = saved
        return ckpt.path.name

    @property
    def samples_per_step(self) -> int:
        return self.state.micro_batch * self.state.grad_accum * self.num_processes

    def events_emit(self, type: str, **fields: Any) -> None:
        if self.events is not None and getattr(self, "is_main", True):
            self.events.emit(type, **fields)

    def _start_event(self, resumed_from: str | None) -> None:
        from engine.train.params import trainable_summary

        profile = self.profile
        summary = trainable_summary(self.accelerator.unwrap_model(self.model))
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
            params=summary,
            pid=os.getpid(),
        )

    # ------------------------------------------------------------------ train
    def _loader(self, indices: list[list[int]], dataset) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=indices,
            collate_fn=self.family.collate,
            num_workers=self.profile.data.num_workers,
        )

    def _install_signals(self) -> list[tuple[int, Any]]:
        if not self.install_signal_handlers:
            return []
        import threading

        if threading.current_thread() is not threading.main_thread():
            return []
        previous = []

        def handler(signum, _frame):
            name = signal.Signals(signum).name
            if self.stop_reason is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_reason = name

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous.append((sig, signal.signal(sig, handler)))
        return previous

    def _control_files(self) -> tuple[bool, bool]:
        """(stop, save) requested through files dropped in the run directory (the wizard uses these)."""
        stop = (self.run_dir / "STOP").exists()
        save = (self.run_dir / "SAVE").exists()
        flags = torch.tensor([float(stop), float(save)], device=self.accelerator.device)
        if self.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _run_micro_batches(self, micro_batches: list[list[int]], loader: Any) -> tuple[float, int, int, dict[str, float]]:
        """Forward and backward over one step's micro-batches; returns (mean loss, samples, tokens, metrics)."""
        model = self.model
        n = len(micro_batches)
        loss_sum = torch.zeros((), device=self.accelerator.device)
        samples = tokens = 0
        metrics: dict[str, float] = {}
        for i, batch in enumerate(loader):
            if self.hooks.before_micro_batch is not None:
                self.hooks.before_micro_batch(self, micro_batches[i])
            from accelerate.utils import send_to_device

            seeds = seeding.sample_seeds(micro_batches[i], self.profile.train.seed, self.state.epoch)
            if isinstance(batch, dict):
                batch["sample_seeds"] = seeds
            batch = send_to_device(batch, self.accelerator.device)
            sync = contextlib.nullcontext() if i == n - 1 else self.accelerator.no_sync(model)
            # The global RNG (dropout, PTv3's order shuffle) is seeded from this micro-batch's samples, so a
            # micro-batch computes the same on any process: N processes match N-step accumulation.
            with sync, torch.random.fork_rng(devices=self._rng_devices), self.accelerator.autocast():
                torch.manual_seed(seeding.combine_seeds(seeds))
                out = self.recipe.task.loss(model, batch)
                self.accelerator.backward(out.loss / n)
            loss_sum += out.loss.detach().float()
            samples += out.num_samples
            tokens += out.num_tokens
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / n
        loss = loss_sum / n
        if self.num_processes > 1:
            loss = self.accelerator.reduce(loss, reduction="mean")
        return float(loss), samples, tokens, metrics

    def _halve_micro_batch(self, exc: BaseException) -> None:
        state = self.state
        if state.micro_batch == 1:
            from engine.memory.oom import levers_message

            raise HardwareError(levers_message(self.recipe)) from None
        old = (state.micro_batch, state.grad_accum)
        state.micro_batch //= 2
        state.grad_accum *= 2
        self._write_resolved_profile()
        msg = (
            f"out of memory at micro-batch {old[0]}: retrying step {state.step + 1} with micro-batch "
            f"{state.micro_batch} and grad_accum {state.grad_accum} (effective batch unchanged: "
            f"{self.samples_per_step}); profile.resolved.yaml updated"
        )
        self.events_emit("oom", step=state.step + 1, micro_batch=state.micro_batch, grad_accum=state.grad_accum,
                         previous_micro_batch=old[0], previous_grad_accum=old[1], message=msg)
        self.events_emit("warning", message=msg)

    def _memory_bytes(self) -> int:
        if self.accelerator.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.accelerator.device))
        return int(psutil.Process().memory_info().rss)

    def _one_step(self) -> float:
        """Runs one optimizer step, retrying with a halved micro-batch on out-of-memory."""
        state = self.state
        step_in_epoch = state.epoch_sample // self.samples_per_step
        while True:
            stream = self._stream
            if stream is None or stream.key != (state.epoch, state.micro_batch, state.grad_accum) \
                    or stream.next_step != step_in_epoch:
                stream = self._stream = _StepStream(self, step_in_epoch)
            micro, batches = stream.take()
            t0 = time.perf_counter()
            try:
                loss, samples, tokens, metrics = self._run_micro_batches(micro, batches)
                break
            except Exception as exc:
                if not (is_oom(exc) and self.profile.train.oom_recovery):
                    raise
                self._stream = None  # this step's samples are fetched again at the smaller micro-batch
                self.optimizer.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._halve_micro_batch(exc)
        first_step = state.step == 0 and not self.resume
        warning = self.watchdog.check(loss, state.step + 1)  # raises on NaN/inf before any update
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
        elapsed = time.perf_counter() - t0

        step_epoch = state.epoch  # the epoch this step's samples came from (0-based)
        state.step += 1
        state.epoch_sample += self.samples_per_step
        if state.epoch_sample + self.samples_per_step > len(self.train_ds):
            state.epoch += 1
            state.epoch_sample = 0
        state.loss_ema = self.watchdog.ema
        self.losses.append(loss)
        if state.step % self.profile.train.log_every == 0 or state.step == self.total_steps:
            world_samples = samples * self.num_processes
            self.events_emit(
                "step",
                step=state.step,
                total_steps=self.total_steps,
                epoch=step_epoch,
                loss=loss,
                lr=lr,
                grad_norm=grad_norm,
                step_time=elapsed,
                samples_per_s=world_samples / elapsed if elapsed > 0 else None,
                tokens_per_s=tokens * self.num_processes / elapsed if elapsed > 0 else None,
                memory_bytes=self._memory_bytes(),
                micro_batch=state.micro_batch,
                grad_accum=state.grad_accum,
                **{f"train/{k}": v for k, v in metrics.items()},
            )
            if self.profile.output.tensorboard:
                self.accelerator.log({"train/loss": loss, "train/lr": lr}, step=state.step)
        return loss

    def _evaluate(self) -> dict[str, float]:
        if self.val_ds is None or len(self.val_ds) == 0:
            return {}
        model = self.accelerator.unwrap_model(self.model)
        indices = list(range(len(self.val_ds)))
        micro = self.state.micro_batch
        batches = [indices[i : i + micro] for i in range(0, len(indices), micro)]
        if hasattr(self.val_ds, "set_epoch"):
            self.val_ds.set_epoch(0)
        loader = self._loader(batches, self.val_ds)
        from accelerate.utils import send_to_device

        was_training = model.training
        model.eval()
        # Evaluation must not move the training RNG, or runs with and without eval would differ.
        with torch.random.fork_rng(devices=[]), torch.no_grad(), self.accelerator.autocast():
            metrics = self.recipe.task.evaluate(model, (send_to_device(b, self.accelerator.device) for b in loader))
        model.train(was_training)
        return {k: float(v) for k, v in metrics.items()}

    def _maybe_eval(self, force: bool = False) -> None:
        every = self.profile.train.eval_every
        if not force and (every is None or self.state.step % every != 0):
            return
        metrics = self._evaluate()
        if not metrics:
            return
        task = self.recipe.task
        primary = metrics.get(task.primary_metric)
        best = self.state.best_metric
        improved = primary is not None and (
            best is None or (primary > best if task.greater_is_better else primary < best)
        )
        if improved:
            self.state.best_metric, self.state.best_step = primary, self.state.step
            self._save_adapter(self.run_dir / "adapter-best")
        self.events_emit("eval", step=self.state.step, metrics=metrics, primary=task.primary_metric,
                         best=self.state.best_metric, best_step=self.state.best_step, improved=improved)
        if self.profile.output.tensorboard:
            self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.state.step)

    def _train(self) -> str:
        checkpoint_every = self.profile.train.checkpoint_every
        if self.state.step >= self.total_steps:
            return "completed"
        self.model.train()
        while self.state.step < self.total_steps:
            self._one_step()
            if self.hooks.after_step is not None:
                self.hooks.after_step(self)
            self._maybe_eval()
            stop_file, save_file = self._control_files()
            if checkpoint_every and self.state.step % checkpoint_every == 0 and self.state.step < self.total_steps:
                self._save_checkpoint("schedule")
            elif save_file:
                self._save_checkpoint("requested")
            if save_file and self.is_main:
                (self.run_dir / "SAVE").unlink(missing_ok=True)
            if self.stop_reason or stop_file:
                reason = self.stop_reason or "STOP file"
                self._save_checkpoint(f"stop ({reason})")
                if self.is_main:
                    (self.run_dir / "STOP").unlink(missing_ok=True)
                self.events_emit("info", message=f"stopped by {reason} at step {self.state.step}; resume with --resume")
                return "stopped"
        if self.profile.train.eval_every is None or self.state.step % self.profile.train.eval_every != 0:
            self._maybe_eval(force=True)
        self._save_checkpoint("final")
        return "completed"

    # ------------------------------------------------------------------ save
    def _save_checkpoint(self, reason: str) -> None:
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        model = self.accelerator.unwrap_model(self.model)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        root = self.run_dir / "checkpoints"
        path = save_checkpoint(
            root,
            self.state,
            trainable,
            self.optimizer.state_dict(),
            self.scheduler.state_dict(),
            self.identity,
            extra={"reason": reason, "num_processes": self.num_processes},
        )
        prune_checkpoints(root, self.profile.train.keep_last)
        self.events_emit("checkpoint", step=self.state.step, path=str(path), reason=reason)

    def _save_adapter(self, folder: Path) -> None:
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return
        model = self.accelerator.unwrap_model(self.model)
        metadata = {
            "family": self.profile.model.family,
            "task": self.profile.model.task,
            "pretrained": str(self.profile.model.pretrained) if self.profile.model.pretrained else None,
            "step": self.state.step,
            "profile_name": self.profile.name,
        }
        try:
            # Staged whole, whatever the family writes next to the adapter (e.g. a segmentation head).
            with tempfile.TemporaryDirectory(prefix=f".{folder.name}.", dir=folder.parent) as staging:
                staged = Path(staging) / folder.name
                if self.recipe.lora.method == "full":
                    save_full_model(model, staged, metadata)
                else:
                    self.family.save_adapter(model, staged, metadata)
                replace_folder(staged, folder)
        except OSError as exc:
            raise CheckpointError(
                f"{folder}: adapter could not be written ({exc.strerror or exc}). Free disk space and rerun with --resume."
            ) from None

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        previous_handlers = []
        status = "failed"
        try:
            self.setup()
            previous_handlers = self._install_signals()
            status = self._train()
            if status == "completed":
                self._save_adapter(self.run_dir / "adapter")
            metrics = {"best_" + self.recipe.task.primary_metric: self.state.best_metric} if self.state.best_metric is not None else {}
            self.events_emit("end", status=status, step=self.state.step, final_loss=self.losses[-1] if self.losses else None,
                             best_metric=self.state.best_metric, best_step=self.state.best_step,
                             adapter=str(self.run_dir / "adapter") if status == "completed" else None)
            return RunResult(status, self.state.step, self.run_dir, metrics, self.losses)
        except Lora3dError as exc:
            self.events_emit("error", message=str(exc), kind=type(exc).__name__)
            self.events_emit("end", status="failed", step=getattr(getattr(self, "state", None), "step", 0))
            raise
        except BaseException as exc:
            self.events_emit("error", message=f"{type(exc).__name__}: {exc}", kind=type(exc).__name__)
            self.events_emit("end", status="failed", step=getattr(getattr(self, "state", None), "step", 0))
            raise
        finally:
            for sig, handler in previous_handlers:
                signal.signal(sig, handler)
            self._cleanup()

    def _cleanup(self) -> None:
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and self.profile.output.tensorboard:
            with contextlib.suppress(Exception):
                accelerator.end_training()
        if self.events is not None:
            self.events.close()


def train(recipe: Recipe, run_dir: Path | None = None, resume: bool = False, **kwargs: Any) -> RunResult:
    """Runs a training job described by `recipe`; see Trainer."""
    return Trainer(recipe, run_dir=run_dir, resume=resume, **kwargs).run()
