"""A small family for engine tests: a two-layer regression model with attention-like names.

Deterministic data (a sample is a function of (seed, index)); LoRA through the engine on `blocks.*.proj`.
Registered when imported; subprocesses load it with LORA3D_PLUGINS=tests.toy_family.

It is also the proof of the family contract: everything the engine and the wizard offer for a family
(`lora3d plan`, `lora3d demo toy`, the wizard's model list, the resume identity) works for it from this file
alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from pydantic import BaseModel, Field
from torch import nn

from engine.families.base import Family, MemoryDescription, Recipe, StepOutput, WizardSpec
from engine.families.registry import register_family
from engine.lora.spec import LoraSpec, ModuleNames
from engine.seeding import sample_generators

DIM = 8
TRAIN_SEED, VAL_SEED = 7, 8
"""The toy data's seeds (part of its resume identity)."""


class ToyModelOptions(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}
    num_blocks: int = Field(default=2, ge=1, le=64)
    nan_at_step: int | None = None
    """Test seam: the loss becomes NaN from this training step on."""
    unused_block: bool = False
    """Test seam: an adapted block that the forward never calls (gradient-flow guard)."""


class ToyDataOptions(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}
    num_train: int = Field(default=32, ge=0, le=1_000_000)
    num_val: int = Field(default=8, ge=0, le=1_000_000)


class ToyLoraOptions(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}
    target_stages: list[int] | None = Field(default=None, description="Blocks to adapt; empty = all.")


@dataclass(frozen=True)
class ToyPreset:
    name: str = "tiny"
    description: str = "rank 2 on every block"

    def profile_values(self, context: Any) -> dict[str, Any]:
        return {"r": 2, "alpha": 4.0, "target_stages": None}


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


@dataclass(frozen=True)
class ToyTask:
    """Regression with per-sample input noise; `nan_at_step` turns the loss into NaN (guard tests)."""

    nan_at_step: int | None
    grad_accum: int
    name: str = "regress"
    primary_metric: str = "val_loss"
    greater_is_better: bool = False

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        # Per-sample noise from the trainer's sample seeds: the same whatever the process or micro-batch.
        noise = torch.stack([torch.randn(DIM, generator=g) for g in sample_generators(batch["sample_seeds"])])
        pred = model(batch["x"] + 0.1 * noise)
        loss = nn.functional.mse_loss(pred, batch["y"])
        inner = getattr(model, "module", model)  # DDP wraps the model in multi-process runs
        inner.calls += 1
        if self.nan_at_step is not None and inner.calls >= self.nan_at_step * self.grad_accum:
            loss = loss * float("nan")
        return StepOutput(loss=loss, num_samples=len(batch["x"]), num_tokens=len(batch["x"]))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in batches:
            total += float(nn.functional.mse_loss(model(batch["x"]), batch["y"], reduction="sum"))
            n += len(batch["x"])
        return {"val_loss": total / max(n, 1)}


def _seeds() -> tuple[int, int]:
    """Read at call time, so a test can change the data the family builds."""
    return TRAIN_SEED, VAL_SEED


DEMO_PROFILE: dict[str, Any] = {
    "schema_version": 1,
    "name": "demo-toy",
    "model": {"family": "toy"},
    "lora": {"r": 4, "alpha": 8},
    "train": {"max_steps": 8, "batch_size": 4, "lr": 0.05, "device": "cpu"},
    "output": {"dir": "runs/demo-toy", "tensorboard": False},
}


def run_demo(out_dir: Path | None = None, console: Any = None, quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The toy's built-in demo: base vs adapted validation loss after a short LoRA run."""
    from engine.families.recipe import resolve_recipe
    from engine.train.trainer import Trainer

    data = {**DEMO_PROFILE, "output": {**DEMO_PROFILE["output"], "dir": str(out_dir or "runs/demo-toy")},
            "train": {**DEMO_PROFILE["train"], "seed": seed}}
    recipe = resolve_recipe(data, "<demo toy>")
    result = Trainer(recipe, install_signal_handlers=False).run()
    if console is not None:
        console.print(f"toy demo: {result.status} after {result.step} steps, final loss {result.losses[-1]:.4f}")
    return {"status": result.status, "losses": result.losses, "run_dir": str(result.run_dir)}


@register_family
class ToyFamily(Family):
    name = "toy"
    label = "Toy: a two-block regression model (engine tests)"
    tasks = ("regress",)
    default_task = "regress"
    model_options = ToyModelOptions
    data_options = ToyDataOptions
    lora_options = ToyLoraOptions
    presets = {"tiny": ToyPreset()}
    demo = "tests.toy_family:run_demo"
    wizard = WizardSpec(
        description="A two-block regression model with LoRA on each block's projection; trains in seconds.",
        new_profile={"model": {"family": "toy"}, "train": {"max_steps": 8, "device": "cpu"}},
        demo_label="Toy demo (seconds on a CPU)",
    )

    def check(self, profile) -> list[str]:
        stages = profile.lora.target_stages
        if stages is not None and len(set(stages)) != len(stages):
            return [f"`lora.target_stages` lists a stage twice, got {stages}."]
        if profile.lora.target_stages and max(profile.lora.target_stages) >= profile.model.num_blocks:
            return [f"`lora.target_stages` out of range, got {profile.lora.target_stages}. Valid stages: "
                    f"{list(range(profile.model.num_blocks))}."]
        return []

    def build_recipe(self, profile, notes: list[str], source: str) -> Recipe:
        lora = profile.lora
        stages = lora.target_stages if lora.target_stages is not None else range(profile.model.num_blocks)
        targets = [f"blocks.{i}.proj" for i in stages] + (["spare.proj"] if profile.model.unused_block else [])
        spec = LoraSpec(method=lora.method, r=lora.r, alpha=lora.alpha or lora.r, dropout=lora.dropout,
                        targets=ModuleNames(tuple(targets)), preset=lora.preset)
        task = ToyTask(profile.model.nan_at_step, profile.train.grad_accum)
        return Recipe(self, profile, task, spec, notes=tuple(notes), source=source)

    def build_model(self, recipe: Recipe) -> nn.Module:
        torch.manual_seed(1234)  # the "pretrained" base is the same in every run
        model = ToyModel(recipe.profile.model.num_blocks, recipe.profile.model.unused_block)
        return model.requires_grad_(False)

    def set_gradient_checkpointing(self, model, enabled: bool) -> None:
        model.checkpointing = enabled

    def build_datasets(self, recipe: Recipe):
        data = recipe.profile.data
        return ToyDataset(data.num_train, _seeds()[0]), ToyDataset(data.num_val, _seeds()[1])

    def collate(self, samples):
        return {"x": torch.stack([s["x"] for s in samples]), "y": torch.stack([s["y"] for s in samples])}

    def identity(self, recipe: Recipe, model: nn.Module) -> dict[str, Any]:
        return {"data_seeds": list(_seeds())}

    def preview_data(self, recipe: Recipe, folder: Path) -> list[Path]:
        """One PNG of the first training item: its 8 inputs as bars (blue up, red down), its target as a band."""
        sample = self.build_datasets(recipe)[0][0]
        image = Image.new("RGB", (160, 80), (250, 250, 250))
        draw = ImageDraw.Draw(image)
        for i, value in enumerate(sample["x"].tolist()):
            top, bottom = sorted((40, 40 - int(max(-2.0, min(2.0, value)) * 15)))
            draw.rectangle([8 + 16 * i, top, 18 + 16 * i, bottom], fill=(40, 90, 220) if value >= 0 else (220, 60, 40))
        level = 40 - int(float(sample["y"]) * 15)
        draw.rectangle([140, level - 2, 156, level + 2], fill=(30, 160, 60))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "item-0.png"
        image.save(path)
        return [path]

    def describe_memory(self, recipe: Recipe) -> MemoryDescription:
        blocks = recipe.profile.model.num_blocks
        frozen = blocks * (DIM * DIM + DIM) + DIM + 1
        per_rank = blocks * 2 * DIM
        layers = [{"name": f"blocks.{i}", "fp32_elems": 3 * DIM, "ckpt_elems": DIM} for i in range(blocks)]
        return MemoryDescription(frozen_params=frozen, lora_params=per_rank * recipe.lora.r, other_trainable_params=0,
                                 tokens_per_sample=1, layers=layers, rank=recipe.lora.r, lora_params_per_rank=per_rank,
                                 input_bytes_per_token=4 * (DIM + 1))
