"""Provides the profile schema: every key a profile may hold, its default and its valid range.

A family adds its own keys to the `model`, `data`, `lora` and `previews` sections (`ProfileExtension`, declared
by the family as `model_options`, `data_options`, `lora_options` and `preview_options`); `engine.profile.load` merges them in before
validating. A validated profile is frozen: nothing changes it after validation (what a family derives from
it lives in its Recipe, and what changes at run time, such as an OOM-halved micro-batch, in the trainer's
state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

SCHEMA_VERSION = 1


_NUMBER_TYPES = (int, float, int | None, float | None)
MAX_SEED = 2**32 - 1
"""Largest seed: numpy's legacy generators (and many tools a seed is passed on to) take 32-bit seeds."""
MAX_STEPS = 1_000_000_000
"""Largest step count or interval (a billion steps is far beyond any run)."""


class Section(BaseModel):
    """A profile section: unknown keys are errors, assignments are validated too."""

    # allow_inf_nan: no profile number is meaningful as NaN or infinity.
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        # pydantic would read `r: true` as 1; a boolean where a number belongs is always a mistake.
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in _NUMBER_TYPES:
            raise ValueError(f"must be a number, got {value!r}. Write the number itself")
        return value


class ModelSection(Section):
    family: str = Field(description="Model family plugin (`lora3d families` lists them).")
    pretrained: Path | None = Field(
        default=None,
        description="Base checkpoint file or folder. Empty builds a randomly initialised base "
        "(smoke tests) or, for the demo, the cached tiny base.",
    )
    task: str | None = Field(default=None, description="Family task, e.g. `semseg`, `lang`, `flow`.")


class LoraSection(Section):
    """The family-independent LoRA keys; a family adds where LoRA goes (stages, blocks) as `lora_options`."""

    method: Literal["lora", "full"] = Field(
        default="lora",
        description="`lora` trains adapters on a frozen base; `full` trains every base parameter (the demos' base "
        "pretraining and the LoRA-vs-full benchmarks).",
    )
    preset: str | None = Field(
        default=None,
        description="Named preset. Keys set next to it (same file, or the command line) win over it; a preset given "
        "on the command line wins over the file's keys. What won is reported.",
    )
    r: int = Field(default=8, ge=1, le=1024, description="LoRA rank.")
    alpha: float | None = Field(default=None, gt=0, le=1e6, description="LoRA alpha; empty means alpha = r.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | None = Field(
        default=None, description="Which layers of each targeted block; the family lists its names."
    )


class DataSection(Section):
    root: Path | None = Field(default=None, description="Dataset folder; empty uses the built-in synthetic data.")
    train_split: str = "train"
    val_split: str | None = "val"
    on_error: Literal["stop", "skip"] = Field(
        default="stop", description="A bad scene stops the run (`stop`) or is skipped and reported (`skip`)."
    )
    num_workers: int | Literal["auto"] = Field(
        default="auto",
        description="DataLoader worker processes; `auto`: on a GPU up to 4 (one core left for the training "
        "process), on a CPU 0 (workers would take the cores the model computes on).",
    )

    @field_validator("num_workers")
    @classmethod
    def _workers_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError(f"must be `auto` or 0..64, got {value}")
        return value


class TrainSection(Section):
    epochs: int | None = Field(default=1, ge=1, le=1_000_000, description="Passes over the training set (if no max_steps).")
    max_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Optimizer steps; overrides epochs.")
    batch_size: int = Field(default=2, ge=1, le=4096, description="Samples per micro-batch per process.")
    grad_accum: int = Field(default=1, ge=1, le=4096, description="Micro-batches per optimizer step.")
    lr: float = Field(default=1e-4, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(default=0.01, ge=0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="Linear warm-up steps before the schedule.")
    scheduler: Literal["cosine", "constant"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0, le=1e6, description="Gradient clipping; empty disables.")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the data order, augmentations and LoRA init.")
    eval_every: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Steps between evaluations; empty = at the end.")
    checkpoint_every: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="Steps between checkpoints; empty = at the end.")
    keep_last: int = Field(default=3, ge=1, le=1000, description="Checkpoints kept (older ones are deleted).")
    log_every: int = Field(default=1, ge=1, le=MAX_STEPS, description="Steps between step events.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    oom_recovery: bool = Field(default=True, description="Halve the micro-batch and double accumulation on OOM.")
    loss_spike_factor: float = Field(default=10.0, gt=1.0, le=1e6, description="Warn when loss exceeds this x its average.")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: object) -> object:
        # YAML 1.1 reads an unquoted `no` as false; `mixed_precision: no` must mean "no".
        return "no" if value is False else value


class OutputSection(Section):
    dir: Path = Field(default=Path("runs/run"), description="Run directory (events, checkpoints, adapter).")
    tensorboard: bool = Field(default=True, description="Write TensorBoard logs to `<dir>/tb`.")


class PreviewsSection(Section):
    """Pictures of what the model does, at step 0 and after every evaluation (`<run>/previews/step-N/`).

    A family adds its own keys (e.g. a generator's `sampling_steps`) as `preview_options`.
    """

    enabled: bool = Field(default=True, description="Write previews (families that draw none say so at run start).")
    items: int = Field(default=2, ge=1, le=4, description="Fixed validation items drawn each round (the first ones).")
    max_seconds: float = Field(
        default=30.0, gt=0, le=86_400.0,
        description="Time budget of one preview round, seconds: items that would not fit are skipped (a warning says so).",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of the previews' sampling (same seed, same pictures).")


class LaunchSection(Section):
    num_processes: int = Field(default=1, ge=1, le=1024, description="Processes on all machines together.")
    num_machines: int = Field(default=1, ge=1, le=1024)
    machine_rank: int = Field(default=0, ge=0, le=1023)
    main_process_ip: str | None = None
    main_process_port: int = Field(default=29500, ge=1, le=65535)
    distributed_type: Literal["ddp", "fsdp"] = "ddp"


class HardwareSection(Section):
    """The machine the profile was planned for; a rerun elsewhere is compared against it."""

    cpu_mode: bool = True
    gpu_name: str | None = None
    gpu_count: int = Field(default=0, ge=0, le=1024)
    gpu_total_gb: float | None = Field(default=None, ge=0, le=1e6)
    tier: str | None = None
    measured: dict[str, Any] | None = Field(default=None, description="Numbers written by `lora3d plan --measure`.")


class Profile(Section):
    schema_version: int = Field(description=f"Profile format version; this lora3d reads {SCHEMA_VERSION}.")
    name: str | None = Field(default=None, description="Run name, used for the default output dir.")
    model: ModelSection
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: OutputSection = Field(default_factory=OutputSection)
    previews: PreviewsSection = Field(default_factory=PreviewsSection)
    launch: LaunchSection = Field(default_factory=LaunchSection)
    hardware: HardwareSection | None = None

    @model_validator(mode="after")
    def _check_version(self) -> Profile:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"`schema_version` must be {SCHEMA_VERSION}, got {self.schema_version!r}. "
                f"Set `schema_version: {SCHEMA_VERSION}`"
            )
        return self

    @property
    def device_type(self) -> str:
        """"cuda" or "cpu": `train.device`, or for `auto` the planned machine (`hardware.cpu_mode`), then torch's."""
        if self.train.device in ("cpu", "cuda"):
            return self.train.device
        if self.hardware is not None:
            return "cpu" if self.hardware.cpu_mode else "cuda"
        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def effective_batch(self) -> int:
        # `launch.num_processes` counts every process on every machine, as accelerate does.
        return self.train.batch_size * self.train.grad_accum * self.launch.num_processes

    def to_yaml_dict(self) -> dict[str, Any]:
        """The profile as plain data (paths as strings), in schema order."""
        return self.model_dump(mode="json")
