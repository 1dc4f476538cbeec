"""Provides the Family plugin interface: what a model family supplies to the family-agnostic engine.

A family builds its model (and loads the base checkpoint), injects LoRA, builds datasets and collate,
computes a training step's loss, evaluates, and describes its memory use. The engine owns everything
else: profiles, the trainer, checkpoints, events, the memory planner and the CLI.

NOTE: datasets must be deterministic given (profile seed, epoch, index): the trainer calls
`dataset.set_epoch(epoch)` when the method exists and relies on it for exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    from engine.profile.schema import Profile


@dataclass
class StepOutput:
    """One micro-batch's result.

    Attributes:
        loss: scalar tensor the trainer back-propagates (already averaged over the micro-batch).
        metrics: extra scalars to log (floats).
        num_samples: samples in the micro-batch (scenes for PTv3, instances for MIDI).
        num_tokens: tokens processed (points for PTv3, instances x latent tokens for MIDI).
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    num_samples: int = 1
    num_tokens: int = 0


@dataclass
class MemoryDescription:
    """What the memory planner needs to know about a family's model at the profile's settings.

    All counts are per process; bytes are computed by `engine.memory.estimate`.
    """

    frozen_params: int
    lora_params: int
    other_trainable_params: int
    tokens_per_sample: int
    layers: list[dict[str, Any]] = field(default_factory=list)
    """Per transformer/conv layer: `{"name", "width", "tokens_factor", "heads", "seq"}` plus the saved
    elements per token `fp32_elems`, `half_elems`, `rank_elems` (per unit of rank), `ckpt_elems`,
    `checkpointable` and `scores_stored` (see `engine.memory.estimate.activation_bytes`)."""
    extra_bytes: int = 0
    """Family-specific fixed buffers (caches, frozen encoders kept on device)."""
    frozen_bytes: int | None = None
    """Bytes of the frozen parameters in their dtype; None means 4 x `frozen_params` (fp32)."""
    rank: int = 0
    """The LoRA rank `lora_params` was counted at."""
    lora_params_per_rank: int = 0
    """LoRA parameters per unit of rank, so the planner can vary the rank without re-describing."""
    input_bytes_per_token: float = 0.0
    """Bytes of the micro-batch's input tensors per token (features, targets, coordinates)."""
    index_bytes_per_token: float = 0.0
    """Bytes of integer buffers per token (serialization orders, neighbour maps, padding plans)."""
    fixed_bytes_per_sample: float = 0.0
    """Bytes per sample that do not scale with its tokens (PTv3: the dense neighbour lookup table over the
    scene's voxel grid)."""
    activation_factor: float = 1.0
    """Measured peak over the counted saved tensors (backward temporaries, allocator retention)."""
    notes: list[str] = field(default_factory=list)
    """Defaults and assumptions the description used (shown by `lora3d plan`)."""


class Family:
    """Base class of a family plugin. Subclasses set the class attributes and override the methods."""

    name: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    default_task: ClassVar[str] = ""
    presets: ClassVar[tuple[str, ...]] = ()
    primary_metric: ClassVar[str] = "val_loss"
    """Eval metric used for best-checkpoint tracking."""
    greater_is_better: ClassVar[bool] = False
    model_options: ClassVar[type[BaseModel] | None] = None
    """Pydantic model whose fields are added to the profile's `model` section."""
    data_options: ClassVar[type[BaseModel] | None] = None
    """Pydantic model whose fields are added to the profile's `data` section."""

    def check_profile(self, profile: Profile) -> list[str]:
        """Cross-key checks that need the family (e.g. stages out of range); returns error messages."""
        return []

    def build_model(self, profile: Profile) -> nn.Module:
        """The base model with its task head, base weights loaded, all parameters frozen."""
        raise NotImplementedError

    def inject_lora(self, model: nn.Module, profile: Profile) -> nn.Module:
        """Adds LoRA per the profile's `lora` section and marks only adapter (and head) params trainable."""
        raise NotImplementedError

    def build_datasets(self, profile: Profile) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: dict[str, Any], profile: Profile) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any, profile: Profile) -> dict[str, float]:
        """Metrics over the validation batches; must contain `primary_metric`."""
        raise NotImplementedError

    def set_gradient_checkpointing(self, model: nn.Module, enabled: bool) -> None:
        """Switches per-block gradient checkpointing on the model's backbone."""

    def describe_memory(self, profile: Profile) -> MemoryDescription:
        raise NotImplementedError

    def data_check(self, profile: Profile) -> Any:
        """A report of the data folder (counts, problems) with `to_dict()` and `render(console)`."""
        raise NotImplementedError

    def save_adapter(self, model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
        """Writes the adapter in PEFT layout (adapter_config.json + adapter_model.safetensors)."""
        from engine.lora import save_lora_checkpoint

        save_lora_checkpoint(model, folder, metadata=metadata)

    def merge_adapter(self, profile: Profile, adapter: Path, out: Path) -> Path:
        """Folds the adapter into the base weights and writes a checkpoint a plain model loads strictly."""
        raise NotImplementedError

    def identity(self, model: nn.Module, profile: Profile) -> dict[str, Any]:
        """Fields a checkpoint must share with the run resuming it (architecture, LoRA, data)."""
        from engine.train.identity import model_identity

        return model_identity(model, profile)
