"""A small family for engine tests: a two-layer regression model with attention-like names.

Deterministic data (a sample is a function of (seed, index)); LoRA through PEFT on `blocks.*.proj`.
Registered when imported; subprocesses load it with LORA3D_PLUGINS=tests.toy_family.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from pydantic import BaseModel, Field
from torch import nn

from engine.families.base import Family, MemoryDescription, StepOutput
from engine.families.registry import register_family
from engine.train.batching import sample_generators

DIM = 8


class ToyModelOptions(BaseModel):
    model_config = {"extra": "forbid"}
    num_blocks: int = Field(default=2, ge=1)
    nan_at_step: int | None = None
    """Test seam: the loss becomes NaN from this training step on."""
    unused_block: bool = False
    """Test seam: an adapted block that the forward never calls (gradient-flow guard)."""


class ToyDataOptions(BaseModel):
    model_config = {"extra": "forbid"}
    num_train: int = Field(default=32, ge=0)
    num_val: int = Field(default=8, ge=0)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.proj(x))


class ToyModel(nn.Module):
    def __init__(self, num_blocks: int, unused_block: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(num_blocks))
        self.spare = Block() if unused_block else None
        self.head = nn.Linear(DIM, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=gen)
        w = torch.linspace(-1, 1, DIM)
        self.y = torch.sin(self.x @ w) + 0.5
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


@register_family
class ToyFamily(Family):
    name = "toy"
    tasks = ("regress",)
    default_task = "regress"
    primary_metric = "val_loss"
    greater_is_better = False
    model_options = ToyModelOptions
    data_options = ToyDataOptions

    def check_profile(self, profile) -> list[str]:
        if profile.lora.target_stages and max(profile.lora.target_stages) >= profile.model.num_blocks:
            return [f"`lora.target_stages` out of range, got {profile.lora.target_stages}. Valid stages: "
                    f"{list(range(profile.model.num_blocks))}."]
        return []

    def build_model(self, profile) -> nn.Module:
        torch.manual_seed(1234)  # the "pretrained" base is the same in every run
        model = ToyModel(profile.model.num_blocks, profile.model.unused_block)
        model.requires_grad_(False)
        return model

    def inject_lora(self, model: nn.Module, profile) -> nn.Module:
        lora = profile.lora
        stages = lora.target_stages if lora.target_stages is not None else range(profile.model.num_blocks)
        targets = [f"blocks.{i}.proj" for i in stages]
        if profile.model.unused_block:
            targets.append("spare.proj")
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha or lora.r, lora_dropout=lora.dropout, target_modules=targets)
        model = inject_adapter_in_model(config, model)
        # PEFT inits B to zero; a non-zero B makes the resume/OOM equivalence tests sensitive to A too.
        for name, param in model.named_parameters():
            param.requires_grad = "lora_" in name
        return model

    def set_gradient_checkpointing(self, model, enabled: bool) -> None:
        model.checkpointing = enabled

    def build_datasets(self, profile):
        return ToyDataset(profile.data.num_train, 7), ToyDataset(profile.data.num_val, 8)

    def collate(self, samples):
        return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples])}

    def training_step(self, model, batch, profile) -> StepOutput:
        # Per-sample noise from the trainer's sample seeds: the same whatever the process or micro-batch.
        noise = torch.stack([torch.randn(DIM, generator=g) for g in sample_generators(batch["sample_seeds"])])
        pred = model(batch["x"] + 0.1 * noise)
        loss = nn.functional.mse_loss(pred, batch["y"])
        inner = getattr(model, "module", model)  # DDP wraps the model in multi-process runs
        inner.calls += 1
        nan_at = profile.model.nan_at_step
        if nan_at is not None and inner.calls >= nan_at * profile.train.grad_accum:
            loss = loss * float("nan")
        return StepOutput(loss=loss, num_samples=len(batch["x"]), num_tokens=len(batch["x"]))

    @torch.no_grad()
    def evaluate(self, model, batches, profile) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in batches:
            total += float(nn.functional.mse_loss(model(batch["x"]), batch["y"], reduction="sum"))
            n += len(batch["x"])
        return {"val_loss": total / max(n, 1)}

    def describe_memory(self, profile) -> MemoryDescription:
        return MemoryDescription(frozen_params=0, lora_params=0, other_trainable_params=0, tokens_per_sample=1)

    def save_adapter(self, model, folder, metadata) -> None:
        import json

        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(get_peft_model_state_dict(model), str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
        (folder / "lora3d_metadata.json").write_text(json.dumps(metadata))
