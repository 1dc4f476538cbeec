"""Provides `SceneSplatFamily`: PTv3 over 3D Gaussian splats, tasks `semseg` and `lang`, as a lora3d family.

What the family adds to a profile (`model.*` and `data.*` keys) is declared in
`SceneSplatModelOptions` and `SceneSplatDataOptions`. With an empty `data.root` the family trains on
the built-in synthetic rooms (engine.families.scenesplat.synthetic), generated in memory.

NOTE: the segmentation head stays trainable next to the LoRA weights (`model.train_head`, on by
default): a new dataset brings new classes, so a frozen head from the base would be useless. The
head is saved next to the adapter as `seg_head.safetensors` and loaded by `load_adapter`. The
language task has no head: its output is the backbone's normalised feature.

NOTE: every BatchNorm of the frozen base stays in eval mode while training (a forward pre-hook),
so its running statistics never change: the saved adapter plus the base reproduce the trained model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from engine.errors import CheckpointError, DataError
from engine.families.base import Family, MemoryDescription, StepOutput
from engine.families.scenesplat import task as tasks
from engine.families.scenesplat.data import (
    SceneFolderDataset,
    build_sample,
    collate_scenes,
    load_text_embeddings,
)
from engine.families.scenesplat.synthetic import (
    DOMAINS,
    SYNTHETIC_CLASSES,
    generate_room,
    text_embedding_table,
)
from engine.families.scenesplat.transforms import build_transforms
from engine.lora import (
    PTV3_MODULE_GROUPS,
    PTV3_PRESETS,
    inject_lora_to_ptv3,
    load_lora_checkpoint,
    mark_only_lora_as_trainable,
    merge_lora_weights,
    save_lora_checkpoint,
)
from engine.models.ptv3 import (
    POINTCEPT_DEFAULT_CONFIG,
    SCENESPLAT_CONFIG,
    PTv3LanguageModel,
    PTv3Segmentor,
    load_ptv3_state_dict,
)

IN_CHANNELS = 11
"""color(3) + opacity(1) + quat(4) + scale(3), the order `Collect` concatenates them in."""

DEMO_TINY_CONFIG: dict[str, Any] = dict(
    in_channels=IN_CHANNELS,
    order=("z", "z-trans"),
    stride=(2, 2),
    enc_depths=(1, 1, 1),
    enc_channels=(16, 32, 64),
    enc_num_head=(1, 2, 4),
    enc_patch_size=(128, 128, 128),
    dec_depths=(1, 1),
    dec_channels=(32, 32),
    dec_num_head=(2, 2),
    dec_patch_size=(128, 128),
    enable_flash=False,
    drop_path=0.0,
    pooling="mean",
)
"""A three-stage PTv3 of about 0.33M parameters: the demo's base and the tests' model."""

BACKBONES: dict[str, dict[str, Any]] = {
    "scenesplat": SCENESPLAT_CONFIG,
    # Pointcept's class defaults read 6 input channels (xyz + rgb); Gaussians give 11.
    "pointcept": {**POINTCEPT_DEFAULT_CONFIG, "in_channels": IN_CHANNELS},
    "demo-tiny": DEMO_TINY_CONFIG,
}
"""Named backbones (`model.backbone`): PointTransformerV3 keyword arguments."""

HEAD_FILE = "seg_head.safetensors"
"""The trainable segmentation head, saved next to the adapter."""

_CHECKPOINT_NAMES = ("model/model_best.pth", "model/model_last.pth", "model_best.pth", "model_last.pth",
                     "model.safetensors", "model.pth")


class SceneSplatModelOptions(BaseModel):
    """`model.*` keys of a scenesplat profile."""

    model_config = ConfigDict(extra="forbid")

    backbone: Literal["scenesplat", "pointcept", "demo-tiny"] | dict[str, Any] = Field(
        default="scenesplat",
        description="PTv3 architecture: `scenesplat` (SceneSplat's language backbone, 4 stages, 768-d out), "
        "`pointcept` (Pointcept's PT-v3m1 defaults, 5 stages, 11 input channels), `demo-tiny` "
        "(3 stages, 0.33M parameters) or a mapping of PointTransformerV3 keyword arguments.",
    )
    num_classes: int | None = Field(
        default=None, ge=1,
        description="semseg: classes of the head; empty = len(`class_names`), or 6 for the synthetic rooms.",
    )
    class_names: list[str] | None = Field(default=None, description="Class names for per-class metrics.")
    ignore_index: int = Field(default=-1, description="Label value that is not trained or counted.")
    train_head: bool = Field(default=True, description="semseg: train the segmentation head with the adapter.")
    text_embeddings: Path | None = Field(
        default=None,
        description="lang: zero-shot text embeddings `.npy`/`.pt` [num_classes, D] (+ `.json` class names); "
        "empty = `<data.root>/text_embeddings.npy`, or the synthetic table.",
    )
    lang_dim: int | None = Field(
        default=None, ge=1, description="lang: language-feature width; must equal the backbone's output width."
    )
    cos_weight: float = Field(default=1.0, ge=0, description="lang: weight of mean(1 - cos).")
    l2_weight: float = Field(default=1.0, ge=0, description="lang: weight of the mean squared L2 distance.")
    contrastive_weight: float = Field(
        default=0.0, ge=0, description="lang: weight of the aggregated contrastive term (SceneSplat: 0.02-0.025)."
    )
    contrastive_temperature: float = Field(default=0.2, gt=0, description="lang: InfoNCE temperature.")
    contrastive_min_points: int = Field(default=100, ge=2, description="lang: points a class needs to take part.")
    zero_shot_threshold: float = Field(
        default=tasks.ZERO_SHOT_THRESHOLD, ge=0, le=1, description="lang eval: sigmoid score below which a point is unlabelled."
    )
    fg_exclude: list[str] = Field(
        default_factory=lambda: list(tasks.FOREGROUND_EXCLUDE),
        description="Classes left out of `fg_miou` / `fg_macc`.",
    )
    demo_base: bool = Field(
        default=False,
        description="With an empty `model.pretrained`: load the demo's tiny base pretrained on synthetic domain A "
        "(built and cached under $LORA3D_CACHE on first use). Needs `backbone: demo-tiny`.",
    )


class SceneSplatDataOptions(BaseModel):
    """`data.*` keys of a scenesplat profile."""

    model_config = ConfigDict(extra="forbid")

    grid_size: float = Field(default=0.02, gt=0, description="Voxel edge in metres (SceneSplat: 0.02).")
    point_budget: int | None = Field(
        default=None, ge=64, description="Keep at most this many points per scene after voxelisation (SceneSplat: 192000)."
    )
    label_key: Literal["segment", "segment20", "segment200"] = Field(
        default="segment", description="Label file that becomes `segment`."
    )
    augment: bool = Field(default=True, description="Train augmentations (rotate, scale, flip, jitter, colour).")
    loop: int = Field(default=1, ge=1, description="Passes over the training scenes per epoch (Pointcept's `loop`).")
    synthetic_domain: Literal["A", "B"] = Field(default="B", description="Built-in data: appearance domain.")
    synthetic_train: int = Field(default=8, ge=1, description="Built-in data: training rooms.")
    synthetic_val: int = Field(default=4, ge=0, description="Built-in data: validation rooms.")
    synthetic_points: int = Field(default=6000, ge=64, description="Built-in data: Gaussians per room (domain A).")
    synthetic_seed: int = Field(default=0, ge=0, description="Built-in data: seed of the rooms.")
    synthetic_shift: float = Field(
        default=1.0, ge=0, le=1, description="Built-in data: how far domain B's look moves from A's (0..1)."
    )


# ------------------------------------------------------------------------------- profile helpers
def backbone_config(profile: Any) -> dict[str, Any]:
    """The PointTransformerV3 keyword arguments the profile asks for (a copy)."""
    backbone = profile.model.backbone
    return dict(backbone) if isinstance(backbone, dict) else dict(BACKBONES[backbone])


def backbone_label(profile: Any) -> str:
    backbone = profile.model.backbone
    return "custom" if isinstance(backbone, dict) else backbone


def output_width(config: dict[str, Any]) -> int:
    """Width of the backbone's per-point output, read from the config without building the model."""
    enc_channels = config.get("enc_channels", (32, 64, 128, 256, 512))
    if config.get("enc_mode") or config.get("cls_mode"):
        return int(enc_channels[-1])
    return int(config.get("dec_channels", (64, 64, 128, 256))[0])


def num_stages(config: dict[str, Any]) -> int:
    return len(config.get("enc_depths", (2, 2, 2, 6, 2)))


def task_of(profile: Any) -> str:
    return profile.model.task or SceneSplatFamily.default_task


def class_names_of(profile: Any) -> list[str]:
    """Class names: `model.class_names`, the synthetic classes, or `class_<i>`."""
    if profile.model.class_names:
        return list(profile.model.class_names)
    if profile.data.root is None:
        return list(SYNTHETIC_CLASSES)
    return [f"class_{i}" for i in range(num_classes_of(profile))]


def num_classes_of(profile: Any) -> int:
    if profile.model.num_classes is not None:
        return profile.model.num_classes
    if profile.model.class_names:
        return len(profile.model.class_names)
    if profile.data.root is None:
        return len(SYNTHETIC_CLASSES)
    raise DataError(
        "`model.num_classes`: is required with a `data.root`, got none. Set it to the number of classes in your labels."
    )


def text_embeddings_path(profile: Any) -> Path | None:
    if profile.model.text_embeddings is not None:
        return Path(profile.model.text_embeddings)
    if profile.data.root is not None:
        for name in ("text_embeddings.npy", "text_embeddings.pt"):
            if (Path(profile.data.root) / name).is_file():
                return Path(profile.data.root) / name
    return None


def demo_base_path(profile: Any) -> Path:
    """The cached demo base for this profile's synthetic settings (pretrained on first use)."""
    from engine.families.scenesplat.demo import ensure_demo_base

    return ensure_demo_base()


def resolve_checkpoint_file(path: Path) -> Path:
    """A checkpoint file, or the usual Pointcept file inside a folder (`model/model_best.pth`, ...)."""
    path = Path(path)
    if path.is_dir():
        for name in _CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path}: no checkpoint found in the folder, got files {sorted(p.name for p in path.iterdir())[:8]!r}. "
            f"Point `model.pretrained` at the .pth or .safetensors file (looked for {', '.join(_CHECKPOINT_NAMES)})."
        )
    return path


def load_base_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Loads a Pointcept/SceneSplat checkpoint into a segmentor or language model.

    The backbone loads strictly. A `seg_head.*` in the checkpoint is loaded when its shape equals the
    model's head (same classes) and skipped otherwise (a new dataset's classes); a language model
    ignores it.

    Returns:
        `{"path", "head": "loaded" | "skipped" | "none"}`.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped backbone keys (the message names them).
    """
    path = resolve_checkpoint_file(Path(path))
    state = load_ptv3_state_dict(path)
    head = {k[len("seg_head."):]: v for k, v in state.items() if k.startswith("seg_head.")}
    body = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("seg_head.")}
    own = model.backbone.state_dict()
    missing = [k for k in own if k not in body]
    unexpected = [k for k in body if k not in own]
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in body.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[:3]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[:3]!r})")
        if mismatched:
            k, a, b = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (first {k!r}: checkpoint {a} vs model {b})")
        raise CheckpointError(
            f"{path}: the checkpoint's backbone does not match `model.backbone`, got {'; '.join(parts)}. "
            "Choose the backbone the checkpoint was trained with (`scenesplat` for SceneSplat's released "
            "checkpoints, `pointcept` for Pointcept PT-v3m1) or give its keyword arguments as a mapping."
        )
    model.backbone.load_state_dict(body, strict=True)
    head_status = "none"
    if head and isinstance(getattr(model, "seg_head", None), nn.Linear):
        own_head = model.seg_head.state_dict()
        if all(k in head and head[k].shape == v.shape for k, v in own_head.items()):
            model.seg_head.load_state_dict({k: head[k] for k in own_head})
            head_status = "loaded"
        else:
            head_status = "skipped"
    return {"path": str(path), "head": head_status}


def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    module.training = False


def freeze_batch_norm(model: nn.Module) -> None:
    """Keeps every BatchNorm in eval mode even under `model.train()` (see the module NOTE)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            module.register_forward_pre_hook(_keep_eval)


def load_adapter(model: nn.Module, folder: str | Path, adapter_name: str = "default") -> nn.Module:
    """Loads an adapter written by a scenesplat run (LoRA + its `seg_head.safetensors` when present).

    Args:
        model: the base model (`SceneSplatFamily.build_model`), with or without other adapters.
        folder: the run's `adapter/` folder (or any PEFT adapter folder / .safetensors file).
        adapter_name: the name to load it under; it becomes the active adapter.

    Returns:
        The same model.
    """
    folder = Path(folder)
    load_lora_checkpoint(model, folder, adapter_name=adapter_name)
    head_file = folder / HEAD_FILE if folder.is_dir() else None
    if head_file is not None and head_file.is_file():
        from safetensors.torch import load_file

        head = load_file(str(head_file))
        if not isinstance(getattr(model, "seg_head", None), nn.Linear):
            raise CheckpointError(
                f"{folder}: the adapter has a segmentation head but the model has none, got "
                f"{type(model).__name__}. Build the model with `model.task: semseg`."
            )
        shapes = {k: tuple(v.shape) for k, v in model.seg_head.state_dict().items()}
        got = {k.removeprefix("seg_head."): tuple(v.shape) for k, v in head.items()}
        if shapes != got:
            raise CheckpointError(
                f"{folder / HEAD_FILE}: head shapes differ from the model's, got {got!r} vs {shapes!r}. "
                "Set `model.num_classes` to the value the adapter was trained with."
            )
        model.seg_head.load_state_dict({k.removeprefix("seg_head."): v for k, v in head.items()})
    return model


def language_view(model: PTv3Segmentor) -> PTv3LanguageModel:
    """A language model over `model`'s own backbone object, sharing its adapter registry.

    Multi-task inference on one base: load the `semseg` adapter into the segmentor and the `lang`
    adapter into this view; both then live in the same LoRA layers, and `set_active_adapter` on either
    model picks which one runs. (A lang adapter cannot go into the segmentor directly: its recorded
    base architecture has no `seg_head`.)
    """
    if not hasattr(model, "peft_config"):
        model.peft_config = {}
    view = PTv3LanguageModel(model.backbone)
    # NOTE: one registry, so PEFT keeps each adapter's tensors apart when saving or loading either model.
    view.peft_config = model.peft_config
    return view


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys PTv3 reads from a collated batch."""
    return {k: batch[k] for k in ("coord", "grid_coord", "feat", "offset") if k in batch}


# ------------------------------------------------------------------------------- datasets
class SyntheticRoomDataset(torch.utils.data.Dataset):
    """Synthetic rooms generated in memory, with the same transforms as a scene folder.

    Room i of a split is `generate_room(default_rng((seed, split_id, i, domain_id)))`, as
    `write_synthetic_dataset` writes it; sample i of an epoch draws its augmentation from
    `default_rng((train_seed, epoch, i))`.
    """

    def __init__(
        self,
        split: str,
        count: int,
        domain: str = "B",
        seed: int = 0,
        num_points: int = 6000,
        lang_dim: int | None = None,
        shift: float = 1.0,
        transforms: Any = None,
        sample_seed: int = 0,
        loop: int = 1,
    ) -> None:
        split_id = 0 if split == "train" else 1
        self.rooms = [
            build_sample(generate_room(np.random.default_rng((seed, split_id, i, DOMAINS.index(domain))), domain,
                                       num_points, lang_dim, shift), name=f"synthetic_{split}_{i:04d}")
            for i in range(count)
        ]
        self.transforms = transforms
        self.sample_seed = sample_seed
        self.loop = loop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rooms) * self.loop

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.rooms[index % len(self.rooms)].items()}
        if self.transforms is None:
            return sample
        return self.transforms(sample, rng=np.random.default_rng((self.sample_seed, self.epoch, index)))


# ------------------------------------------------------------------------------- the family
class SceneSplatFamily(Family):
    """SceneSplat's PTv3 over Gaussian splats: semantic segmentation or language-feature distillation."""

    name = "scenesplat"
    tasks = ("semseg", "lang")
    default_task = "semseg"
    presets = tuple(PTV3_PRESETS)
    primary_metric = "miou"
    greater_is_better = True
    model_options = SceneSplatModelOptions
    data_options = SceneSplatDataOptions

    def __init__(self) -> None:
        self._text_cache: dict[str, tuple[torch.Tensor, list[str]]] = {}

    # ---------------------------------------------------------------- profile
    def check_profile(self, profile: Any) -> list[str]:
        """Cross-key checks; also fills the task default and the preset's values into unset `lora` keys.

        NOTE: the preset is resolved here, at load time, so `profile.resolved.yaml` (and a resume or
        merge that reloads it) carries the values that actually ran.
        """
        errors: list[str] = []
        model, lora = profile.model, profile.lora
        if model.task is None:
            model.task = self.default_task
        if model.task not in self.tasks:
            errors.append(f"`model.task` is not a scenesplat task, got {model.task!r}. Use one of `semseg`, `lang`.")
            return errors
        config = backbone_config(profile)
        label = backbone_label(profile)
        if isinstance(model.backbone, dict):
            if "enc_depths" not in config:
                errors.append(
                    f"`model.backbone` mapping needs `enc_depths` (one entry per stage), got keys {sorted(config)!r}. "
                    "Give the PointTransformerV3 keyword arguments of your checkpoint."
                )
                return errors
            if config.get("in_channels", 6) != IN_CHANNELS:
                errors.append(
                    f"`model.backbone.in_channels` must be {IN_CHANNELS} (color 3 + opacity 1 + quat 4 + scale 3), "
                    f"got {config.get('in_channels', 6)!r}. Set `in_channels: {IN_CHANNELS}`."
                )
        stages = num_stages(config)
        valid = ", ".join(str(s) for s in range(stages))
        if lora.preset is not None and lora.preset not in PTV3_PRESETS:
            errors.append(
                f"`lora.preset` is not a PTv3 preset, got {lora.preset!r}. Use one of "
                f"{', '.join(f'`{p}`' for p in PTV3_PRESETS)}, or remove it and set `lora.r` etc. directly."
            )
        elif lora.preset is not None:
            self._fill_preset(lora, stages)
        if lora.target_stages is not None:
            bad = [s for s in lora.target_stages if not 0 <= s < stages]
            if bad:
                errors.append(
                    f"`lora.target_stages` lists stage(s) {bad} that the `{label}` backbone does not have, "
                    f"got {lora.target_stages}. Valid stages: {valid} ({stages} encoder stages)."
                )
        if lora.target_modules is not None:
            unknown = [m for m in lora.target_modules if m not in PTV3_MODULE_GROUPS]
            if unknown or not lora.target_modules:
                errors.append(
                    f"`lora.target_modules` must be a non-empty subset of `attn`, `mlp`, `qkv` for PTv3, got "
                    f"{lora.target_modules!r}. Use [attn] (qkv + proj), [attn, mlp] or [qkv] (Pointcept's choice)."
                )
        if model.demo_base and model.pretrained is None and label != "demo-tiny":
            errors.append(
                f"`model.demo_base` needs `model.backbone: demo-tiny`, got {label!r}. "
                "Set the backbone to demo-tiny or turn `model.demo_base` off."
            )
        if model.task == "semseg":
            errors.extend(self._check_semseg(profile))
        else:
            errors.extend(self._check_lang(profile, config))
        return errors

    @staticmethod
    def _fill_preset(lora: Any, stages: int) -> None:
        preset = PTV3_PRESETS[lora.preset]
        explicit = set(lora.model_fields_set)
        values: dict[str, Any] = {
            "r": preset.r,
            "alpha": float(preset.lora_alpha),
            "target_modules": list(preset.target_modules),
            "enable_prompt": preset.enable_prompt,
            "encoder_only": preset.stages in ("last_two_encoder", "all_encoder"),
        }
        if preset.stages == "last_two_encoder":
            values["target_stages"] = list(range(max(0, stages - 2), stages))
        for key, value in values.items():
            if key not in explicit:
                setattr(lora, key, value)

    @staticmethod
    def _check_semseg(profile: Any) -> list[str]:
        model = profile.model
        errors = []
        if model.num_classes is None and not model.class_names and profile.data.root is not None:
            errors.append(
                "`model.num_classes` is required with a `data.root`, got none. "
                "Set it to the number of classes in your labels (e.g. 20 for ScanNet `segment20`)."
            )
        if model.class_names and model.num_classes is not None and len(model.class_names) != model.num_classes:
            errors.append(
                f"`model.class_names` has {len(model.class_names)} names but `model.num_classes` is "
                f"{model.num_classes}, got {model.class_names!r}. Make them agree (change either key)."
            )
        if profile.data.root is None and model.num_classes is not None and model.num_classes < len(SYNTHETIC_CLASSES):
            errors.append(
                f"`model.num_classes` must be at least {len(SYNTHETIC_CLASSES)} for the built-in synthetic rooms "
                f"({', '.join(SYNTHETIC_CLASSES)}), got {model.num_classes}. Raise it or set `data.root`."
            )
        return errors

    @staticmethod
    def _check_lang(profile: Any, config: dict[str, Any]) -> list[str]:
        model, data = profile.model, profile.data
        errors = []
        width = output_width(config)
        if model.lang_dim is not None and model.lang_dim != width:
            errors.append(
                f"`model.lang_dim` must equal the backbone's output width ({width} for `{backbone_label(profile)}`), "
                f"got {model.lang_dim}. Remove `model.lang_dim` or change `model.backbone`."
            )
        if data.root is not None:
            split_dir = Path(data.root) / data.train_split
            scenes = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
            if scenes and not (scenes[0] / "lang_feat.npy").is_file():
                errors.append(
                    f"`model.task` lang needs language features, got no `lang_feat.npy` in {scenes[0]}. "
                    "Add lang_feat.npy (+ valid_feat_mask.npy) to every scene, or use `model.task: semseg`."
                )
            text = text_embeddings_path(profile)
            if model.text_embeddings is not None and not Path(model.text_embeddings).is_file():
                errors.append(
                    f"`model.text_embeddings` file not found, got {str(model.text_embeddings)!r}. "
                    "Point it at a [num_classes, D] .npy/.pt table (see `docs/scenesplat.md`)."
                )
            elif text is None and data.val_split is not None:
                errors.append(
                    "`model.text_embeddings` is needed for the lang task's zero-shot evaluation, got none "
                    f"(and no text_embeddings.npy in {data.root}). Set it, or set `data.val_split` to null."
                )
        elif model.text_embeddings is not None and not Path(model.text_embeddings).is_file():
            errors.append(
                f"`model.text_embeddings` file not found, got {str(model.text_embeddings)!r}. "
                "Point it at a [num_classes, D] .npy/.pt table, or remove it for the synthetic table."
            )
        return errors

    # ---------------------------------------------------------------- model
    def build_model(self, profile: Any) -> nn.Module:
        config = backbone_config(profile)
        if task_of(profile) == "semseg":
            model: nn.Module = PTv3Segmentor(config, num_classes_of(profile))
        else:
            model = PTv3LanguageModel(config)
        path = profile.model.pretrained
        if path is None and profile.model.demo_base:
            path = demo_base_path(profile)
        if path is not None:
            model.lora3d_base = load_base_weights(model, path)
        model.requires_grad_(False)
        freeze_batch_norm(model)
        return model

    def inject_lora(self, model: nn.Module, profile: Any) -> nn.Module:
        lora = profile.lora
        target_stages: Iterable[int | str] | None = lora.target_stages
        if target_stages is None and lora.preset is not None:
            # `decoder_only` names decoder stages, which the integer `lora.target_stages` cannot hold.
            target_stages = PTV3_PRESETS[lora.preset].resolve(model)["target_stages"]
        inject_lora_to_ptv3(
            model,
            r=lora.r,
            lora_alpha=lora.alpha or lora.r,
            target_modules=lora.target_modules or ["attn"],
            enable_prompt=lora.enable_prompt,
            encoder_only=lora.encoder_only,
            target_stages=target_stages,
            lora_dropout=lora.dropout,
        )
        mark_only_lora_as_trainable(model)
        if task_of(profile) == "semseg" and profile.model.train_head:
            model.seg_head.requires_grad_(True)
        return model

    def set_gradient_checkpointing(self, model: nn.Module, enabled: bool) -> None:
        if enabled:
            model.backbone.gradient_checkpointing_enable()
        else:
            model.backbone.gradient_checkpointing_disable()

    # ---------------------------------------------------------------- data
    def build_datasets(self, profile: Any) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset | None]:
        data = profile.data
        seed = profile.train.seed

        def transforms(split: str):
            return build_transforms(split, grid_size=data.grid_size, point_budget=data.point_budget, augment=data.augment)

        if data.root is None:
            lang_dim = output_width(backbone_config(profile)) if task_of(profile) == "lang" else None
            common = dict(domain=data.synthetic_domain, seed=data.synthetic_seed, num_points=data.synthetic_points,
                          lang_dim=lang_dim, shift=data.synthetic_shift, sample_seed=seed)
            train = SyntheticRoomDataset("train", data.synthetic_train, transforms=transforms("train"),
                                         loop=data.loop, **common)
            val = (SyntheticRoomDataset("val", data.synthetic_val, transforms=transforms("val"), **common)
                   if data.val_split is not None and data.synthetic_val > 0 else None)
            return train, val
        train = SceneFolderDataset(data.root, data.train_split, transforms("train"), on_error=data.on_error,
                                   loop=data.loop, label_key=data.label_key, seed=seed)
        val = None
        if data.val_split is not None and (Path(data.root) / data.val_split).is_dir():
            val = SceneFolderDataset(data.root, data.val_split, transforms("val"), on_error=data.on_error,
                                     label_key=data.label_key, seed=seed)
        return train, val

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        return collate_scenes(samples)

    # ---------------------------------------------------------------- steps
    def training_step(self, model: nn.Module, batch: dict[str, Any], profile: Any) -> StepOutput:
        num_scenes = len(batch["offset"])
        num_points = int(batch["coord"].shape[0])
        if task_of(profile) == "semseg":
            logits = model(model_inputs(batch))  # (N, C)
            loss = tasks.semseg_loss(logits, batch["segment"], profile.model.ignore_index)
            return StepOutput(loss=loss, num_samples=num_scenes, num_tokens=num_points)
        if "lang_feat" not in batch:
            raise DataError(
                f"{batch.get('scene_names', ['batch'])[0]}: the lang task needs `lang_feat.npy`, got a scene without it. "
                "Add language features to every scene or use `model.task: semseg`."
            )
        feat = model(model_inputs(batch))  # (N, D), unit rows
        m = profile.model
        loss, parts = tasks.lang_loss(
            feat, batch["lang_feat"], batch["valid_feat_mask"], m.cos_weight, m.l2_weight, m.contrastive_weight,
            batch.get("segment"), m.contrastive_temperature, m.contrastive_min_points,
        )
        return StepOutput(loss=loss, metrics=parts, num_samples=num_scenes, num_tokens=num_points)

    def text_table(self, profile: Any) -> tuple[torch.Tensor, list[str]]:
        """The zero-shot text embeddings (C, D) and class names for the lang task's evaluation."""
        path = text_embeddings_path(profile)
        key = str(path) if path is not None else f"synthetic:{output_width(backbone_config(profile))}"
        if key not in self._text_cache:
            if path is not None:
                table, names = load_text_embeddings(path)
                if profile.model.class_names:
                    names = list(profile.model.class_names)
            else:
                width = output_width(backbone_config(profile))
                table, names = text_embedding_table(SYNTHETIC_CLASSES, width), list(SYNTHETIC_CLASSES)
            self._text_cache[key] = (torch.from_numpy(np.asarray(table, dtype=np.float32)), names)
        return self._text_cache[key]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Any, profile: Any) -> dict[str, float]:
        m = profile.model
        if task_of(profile) == "semseg":
            names = class_names_of(profile)
            c = num_classes_of(profile)
            matrix = torch.zeros(c, c + 1, dtype=torch.int64)
            loss_sum, labelled = 0.0, 0
            for batch in batches:
                logits = model(model_inputs(batch))
                target = batch["segment"]
                n = int((target != m.ignore_index).sum())
                if n:
                    loss_sum += float(tasks.semseg_loss(logits, target, m.ignore_index)) * n
                    labelled += n
                matrix += tasks.confusion_matrix(logits.argmax(1), target, c, m.ignore_index)
            metrics = tasks.segmentation_metrics(matrix, names, m.fg_exclude)
            metrics["val_loss"] = loss_sum / max(labelled, 1)
            return metrics
        text, names = self.text_table(profile)
        c = len(names)
        matrix = torch.zeros(c, c + 1, dtype=torch.int64)
        loss_sum, valid_total = 0.0, 0
        for batch in batches:
            feat = model(model_inputs(batch))
            if "lang_feat" in batch:
                valid = batch["valid_feat_mask"].bool()
                n = int(valid.sum())
                if n:
                    loss, _ = tasks.lang_loss(feat, batch["lang_feat"], valid, m.cos_weight, m.l2_weight)
                    loss_sum += float(loss) * n
                    valid_total += n
            if "segment" in batch:
                pred, _ = tasks.zero_shot_predict(feat, text, m.zero_shot_threshold)
                matrix += tasks.confusion_matrix(pred, batch["segment"], c, m.ignore_index)
        metrics = tasks.segmentation_metrics(matrix, names, m.fg_exclude)
        metrics["val_loss"] = loss_sum / max(valid_total, 1)
        return metrics

    # ---------------------------------------------------------------- tooling
    def describe_memory(self, profile: Any) -> MemoryDescription:
        from engine.families.scenesplat.memory import describe_memory

        return describe_memory(profile)

    def data_check(self, profile: Any) -> Any:
        from engine.families.scenesplat.datacheck import scan_dataset

        data = profile.data
        splits = [s for s in (data.train_split, data.val_split) if s is not None]
        num_classes = num_classes_of(profile) if task_of(profile) == "semseg" else None
        if data.root is not None:
            report = scan_dataset(data.root, splits, data.label_key, num_classes)
            return _NamedReport(report, class_names_of(profile) if num_classes else None)
        from engine.families.scenesplat.synthetic import write_synthetic_dataset

        lang_dim = output_width(backbone_config(profile)) if task_of(profile) == "lang" else None
        with tempfile.TemporaryDirectory(prefix="lora3d-synthetic-") as tmp:
            root = Path(tmp) / "rooms"
            write_synthetic_dataset(root, data.synthetic_train, data.synthetic_val if data.val_split else 0,
                                    data.synthetic_domain, data.synthetic_seed, data.synthetic_points,
                                    lang_dim=lang_dim, domain_shift=data.synthetic_shift)
            report = scan_dataset(root, ["train", "val"] if data.val_split else ["train"], "segment",
                                  len(SYNTHETIC_CLASSES))
        report.root = f"built-in synthetic rooms (domain {data.synthetic_domain})"
        return _NamedReport(report, list(SYNTHETIC_CLASSES))

    def save_adapter(self, model: nn.Module, folder: Path, metadata: dict[str, Any]) -> None:
        save_lora_checkpoint(model, folder, metadata=metadata)
        head = getattr(model, "seg_head", None)
        if isinstance(head, nn.Linear) and any(p.requires_grad for p in head.parameters()):
            from safetensors.torch import save_file

            tensors = {f"seg_head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
            save_file(tensors, str(Path(folder) / HEAD_FILE), metadata={"format": "pt"})

    def merge_adapter(self, profile: Any, adapter: Path, out: Path, bare: bool = False) -> Path:
        """Writes base + adapter as one checkpoint with Pointcept's key names.

        `.pth`/`.pt`: Pointcept's layout `{"epoch", "state_dict"}` (SceneSplat's tester reads it), or the
        state dict alone with `bare` (both tensors only, `weights_only=True` loads them);
        `.safetensors`: the same tensors; a folder or a name without suffix: `<out>/model.pth`.
        Keys are `backbone.*` (+ `seg_head.*` for semseg), so `PTv3Segmentor` / `PTv3LanguageModel`
        load it strictly and `load_pretrained` loads it into a bare backbone.

        Raises:
            CheckpointError: the adapter has PointLoRA prompt MLPs (they cannot be folded into weights).
        """
        out = Path(out)
        if out.suffix not in (".pth", ".pt", ".safetensors"):
            out = out / "model.pth"
        model = self.build_model(profile)
        load_adapter(model, adapter)
        merge_lora_weights(model)
        if getattr(model, "lora3d_merged", {}).get("prompt_keys"):
            raise CheckpointError(
                f"{adapter}: the adapter has PointLoRA prompt MLPs, which cannot be folded into the base weights, "
                "got `lora.enable_prompt: true`. Deploy base + adapter (`load_adapter`) instead of a merged file."
            )
        from engine.models.ptv3.checkpoint import save_ptv3_checkpoint

        return save_ptv3_checkpoint(model.state_dict(), out, bare=bare, info={"merged_adapter": str(adapter)})


class _NamedReport:
    """A data-check report that renders with the profile's class names."""

    def __init__(self, report: Any, class_names: list[str] | None) -> None:
        self.report = report
        self.class_names = class_names

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out["class_names"] = self.class_names
        return out

    def render(self, console: Any) -> None:
        self.report.render(console, class_names=self.class_names)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.report, name)


__all__ = [
    "BACKBONES",
    "DEMO_TINY_CONFIG",
    "HEAD_FILE",
    "SceneSplatDataOptions",
    "SceneSplatFamily",
    "SceneSplatModelOptions",
    "SyntheticRoomDataset",
    "backbone_config",
    "language_view",
    "load_adapter",
    "load_base_weights",
]
