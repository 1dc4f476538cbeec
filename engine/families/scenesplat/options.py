"""Provides the SceneSplat family's profile keys and their resolution into `SceneSplatOptions`, checked once.

What the family adds to a profile (`model.*`, `data.*`, `lora.*` keys) is declared in the three pydantic
models; `resolve_options` turns a resolved profile into the frozen options every other module of the
family reads (backbone arguments, classes, text embeddings), and `check_profile` lists every problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES
from engine.families.scenesplat.task import FOREGROUND_EXCLUDE, ZERO_SHOT_THRESHOLD
from engine.lora.targets import PTV3_MODULE_GROUPS, StageLayout
from engine.models.ptv3 import POINTCEPT_DEFAULT_CONFIG, SCENESPLAT_CONFIG

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

_STAGE_NAME = re.compile(r"(enc|dec)\d+")

BACKBONE_LIMITS: dict[str, int] = {
    "enc_depths": 64, "dec_depths": 64, "enc_channels": 4096, "dec_channels": 4096,
    "enc_num_head": 256, "dec_num_head": 256, "enc_patch_size": 16384, "dec_patch_size": 16384, "stride": 8,
}
"""Largest entry of each per-stage key of a `model.backbone` mapping, checked before anything is built (real
PTv3s use at most 768 channels, 16 heads, 1024-point patches); at most `MAX_STAGES` stages."""
MAX_STAGES = 8
MAX_MLP_RATIO = 16


class SceneSplatModelOptions(BaseModel):
    """`model.*` keys of a scenesplat profile."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    backbone: Literal["scenesplat", "pointcept", "demo-tiny"] | dict[str, Any] = Field(
        default="scenesplat",
        description="PTv3 architecture: `scenesplat` (SceneSplat's language backbone, 4 stages, 768-d out), "
        "`pointcept` (Pointcept's PT-v3m1 defaults, 5 stages, 11 input channels), `demo-tiny` "
        "(3 stages, 0.33M parameters) or a mapping of PointTransformerV3 keyword arguments.",
    )
    num_classes: int | None = Field(
        default=None, ge=1, le=100_000,
        description="semseg: classes of the head; empty = len(`class_names`), or 6 for the synthetic rooms.",
    )
    class_names: list[str] | None = Field(default=None, description="Class names for per-class metrics.")
    ignore_index: int = Field(default=-1, ge=-(2**31), le=2**31 - 1, description="Label value that is not trained or counted.")
    train_head: bool = Field(default=True, description="semseg: train the segmentation head with the adapter.")
    text_embeddings: Path | None = Field(
        default=None,
        description="lang: zero-shot text embeddings `.npy`/`.pt` [num_classes, D] (+ `.json` class names); "
        "empty = `<data.root>/text_embeddings.npy`, or the synthetic table.",
    )
    lang_dim: int | None = Field(
        default=None, ge=1, le=65536, description="lang: language-feature width; must equal the backbone's output width."
    )
    cos_weight: float = Field(default=1.0, ge=0, le=1e6, description="lang: weight of mean(1 - cos).")
    l2_weight: float = Field(default=1.0, ge=0, le=1e6, description="lang: weight of the mean squared L2 distance.")
    contrastive_weight: float = Field(
        default=0.0, ge=0, le=1e6, description="lang: weight of the aggregated contrastive term (SceneSplat: 0.02-0.025)."
    )
    contrastive_temperature: float = Field(default=0.2, gt=0, le=1e6, description="lang: InfoNCE temperature.")
    contrastive_min_points: int = Field(default=100, ge=2, le=1_000_000_000, description="lang: points a class needs to take part.")
    zero_shot_threshold: float = Field(
        default=ZERO_SHOT_THRESHOLD, ge=0, le=1, description="lang eval: sigmoid score below which a point is unlabelled."
    )
    fg_exclude: list[str] = Field(
        default_factory=lambda: list(FOREGROUND_EXCLUDE),
        description="Classes left out of `fg_miou` / `fg_macc`.",
    )
    demo_base: bool = Field(
        default=False,
        description="With an empty `model.pretrained`: load the demo's tiny base pretrained on synthetic domain A "
        "(built and cached under $LORA3D_CACHE on first use). Needs `backbone: demo-tiny`.",
    )


class SceneSplatDataOptions(BaseModel):
    """`data.*` keys of a scenesplat profile."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grid_size: float = Field(default=0.02, ge=1e-4, le=100, description="Voxel edge in metres (SceneSplat: 0.02).")
    point_budget: int | None = Field(
        default=None, ge=64, le=100_000_000,
        description="Keep at most this many points per scene after voxelisation (SceneSplat: 192000).",
    )
    label_key: Literal["segment", "segment20", "segment200"] = Field(
        default="segment", description="Label file that becomes `segment`."
    )
    augment: bool = Field(default=True, description="Train augmentations (rotate, scale, flip, jitter, colour).")
    loop: int = Field(default=1, ge=1, le=10_000, description="Passes over the training scenes per epoch (Pointcept's `loop`).")
    synthetic_domain: Literal["A", "B"] = Field(default="B", description="Built-in data: appearance domain.")
    synthetic_train: int = Field(default=8, ge=1, le=10_000, description="Built-in data: training rooms.")
    synthetic_val: int = Field(default=4, ge=0, le=10_000, description="Built-in data: validation rooms.")
    synthetic_points: int = Field(
        default=6000, ge=64, le=10_000_000, description="Built-in data: Gaussians per room (domain A)."
    )
    synthetic_seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Built-in data: seed of the rooms.")
    synthetic_shift: float = Field(
        default=1.0, ge=0, le=1, description="Built-in data: how far domain B's look moves from A's (0..1)."
    )


class SceneSplatLoraOptions(BaseModel):
    """`lora.*` keys of a scenesplat profile: where in the PTv3 the adapters go."""

    model_config = ConfigDict(extra="forbid")

    target_stages: list[int | str] | None = Field(
        default=None,
        description="Stages to adapt: encoder indices (and the same decoder index unless `encoder_only`), or exact "
        "names `enc2`, `dec0`; empty = every stage.",
    )
    encoder_only: bool = Field(default=True, description="Adapt encoder stages only.")
    enable_prompt: bool = Field(default=False, description="PointLoRA prompt MLP per stage and linear role.")


@dataclass(frozen=True)
class SceneSplatOptions:
    """What the family derives from a resolved profile, once.

    Attributes:
        task: `semseg` or `lang`.
        backbone: PointTransformerV3 keyword arguments.
        backbone_label: the `model.backbone` name, or `custom` for a mapping.
        num_classes: semseg head classes (None for lang).
        class_names: names for per-class metrics (lang: from the text embeddings, filled at evaluation).
        text_embeddings: lang: the zero-shot table file, or None for the synthetic table.
        pretrained: the base checkpoint (the cached demo base when `model.demo_base` is on), or None.
    """

    task: str
    backbone: dict[str, Any]
    backbone_label: str
    num_classes: int | None
    class_names: tuple[str, ...] | None
    text_embeddings: Path | None
    pretrained: Path | None

    @property
    def output_width(self) -> int:
        return output_width(self.backbone)

    @property
    def layout(self) -> StageLayout:
        return stage_layout(self.backbone)


def output_width(config: dict[str, Any]) -> int:
    """Width of the backbone's per-point output, read from the config without building the model."""
    enc_channels = config.get("enc_channels", (32, 64, 128, 256, 512))
    if config.get("enc_mode") or config.get("cls_mode"):
        return int(enc_channels[-1])
    return int(config.get("dec_channels", (64, 64, 128, 256))[0])


def stage_layout(config: dict[str, Any]) -> StageLayout:
    """The encoder and decoder stages a backbone config builds (what presets resolve against)."""
    stages = len(config.get("enc_depths", (2, 2, 2, 6, 2)))
    decoder = () if config.get("enc_mode") or config.get("cls_mode") else tuple(range(stages - 1))
    return StageLayout("", tuple(range(stages)), decoder)


def backbone_config(backbone: str | dict[str, Any]) -> dict[str, Any]:
    """The PointTransformerV3 keyword arguments `model.backbone` names (a copy)."""
    return dict(backbone) if isinstance(backbone, dict) else dict(BACKBONES[backbone])


def find_text_embeddings(profile: Any) -> Path | None:
    """`model.text_embeddings`, or `text_embeddings.npy`/`.pt` in `data.root`, or None (synthetic table)."""
    if profile.model.text_embeddings is not None:
        return Path(profile.model.text_embeddings)
    if profile.data.root is not None:
        for name in ("text_embeddings.npy", "text_embeddings.pt"):
            if (Path(profile.data.root) / name).is_file():
                return Path(profile.data.root) / name
    return None


def resolve_options(profile: Any, pretrained: Path | None) -> SceneSplatOptions:
    """The options of a checked profile (`check_profile` returned no problem)."""
    model = profile.model
    task = model.task
    num_classes = None
    class_names = tuple(model.class_names) if model.class_names else None
    if task == "semseg":
        num_classes = model.num_classes or (len(model.class_names) if model.class_names else len(SYNTHETIC_CLASSES))
        if class_names is None:
            class_names = tuple(SYNTHETIC_CLASSES) if profile.data.root is None else tuple(
                f"class_{i}" for i in range(num_classes))
    backbone = model.backbone
    return SceneSplatOptions(
        task=task,
        backbone=backbone_config(backbone),
        backbone_label="custom" if isinstance(backbone, dict) else backbone,
        num_classes=num_classes,
        class_names=class_names,
        text_embeddings=find_text_embeddings(profile) if task == "lang" else None,
        pretrained=pretrained,
    )


def check_profile(profile: Any) -> list[str]:
    """Every cross-key problem of a scenesplat profile (task filled in, preset applied)."""
    errors: list[str] = []
    model, lora = profile.model, profile.lora
    config = backbone_config(model.backbone)
    label = "custom" if isinstance(model.backbone, dict) else model.backbone
    if isinstance(model.backbone, dict):
        if "enc_depths" not in config:
            return [
                f"`model.backbone` mapping needs `enc_depths` (one entry per stage), got keys {sorted(config)!r}. "
                "Give the PointTransformerV3 keyword arguments of your checkpoint."
            ]
        sizes = _check_backbone_sizes(config)
        if sizes:
            return sizes
        if config.get("in_channels", 6) != IN_CHANNELS:
            errors.append(
                f"`model.backbone.in_channels` must be {IN_CHANNELS} (color 3 + opacity 1 + quat 4 + scale 3), "
                f"got {config.get('in_channels', 6)!r}. Set `in_channels: {IN_CHANNELS}`."
            )
    layout = stage_layout(config)
    if lora.target_stages is not None:
        errors.extend(_check_stages(lora.target_stages, layout, label))
    if lora.target_modules is not None:
        unknown = [m for m in lora.target_modules if m not in PTV3_MODULE_GROUPS]
        if unknown or not lora.target_modules:
            errors.append(
                f"`lora.target_modules` must be a non-empty subset of {', '.join(f'`{g}`' for g in PTV3_MODULE_GROUPS)} "
                f"for PTv3, got {lora.target_modules!r}. Use [attn] (qkv + proj) or [attn, mlp]."
            )
    if model.demo_base and model.pretrained is None and label != "demo-tiny":
        errors.append(
            f"`model.demo_base` needs `model.backbone: demo-tiny`, got {label!r}. "
            "Set the backbone to demo-tiny or turn `model.demo_base` off."
        )
    if model.task == "semseg":
        errors.extend(_check_semseg(profile))
    else:
        errors.extend(_check_lang(profile, config, label))
    return errors


def _check_backbone_sizes(config: dict[str, Any]) -> list[str]:
    """Per-stage sizes of a custom backbone mapping within `BACKBONE_LIMITS` (a typo must not allocate terabytes)."""
    errors = []
    for key, limit in BACKBONE_LIMITS.items():
        if key not in config:
            continue
        value = config[key]
        entries = list(value) if isinstance(value, (list, tuple)) else None
        if entries is None or not 1 <= len(entries) <= MAX_STAGES or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limit for v in entries):
            shown = entries[:MAX_STAGES] if entries is not None else value
            errors.append(
                f"`model.backbone.{key}` must list 1 to {MAX_STAGES} whole numbers in 1..{limit} (one per stage), got "
                f"{str(shown)[:80]}. Copy the value from your checkpoint's PointTransformerV3 config."
            )
    ratio = config.get("mlp_ratio", 4)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= MAX_MLP_RATIO:
        errors.append(f"`model.backbone.mlp_ratio` must be a number in (0, {MAX_MLP_RATIO}], got {str(ratio)[:40]}. "
                      "PTv3 uses 4.")
    return errors


def _check_stages(stages: list[int | str], layout: StageLayout, label: str) -> list[str]:
    valid = ", ".join(str(s) for s in layout.encoder)
    if len(set(map(str, stages))) != len(stages):
        return [f"`lora.target_stages` lists a stage twice, got {stages}."]
    bad = [s for s in stages if isinstance(s, int) and s not in layout.encoder]
    bad += [s for s in stages if isinstance(s, str) and (
        not _STAGE_NAME.fullmatch(s) or int(s[3:]) not in (layout.encoder if s.startswith("enc") else layout.decoder))]
    if bad:
        return [
            f"`lora.target_stages` lists stage(s) {bad} that the `{label}` backbone does not have, got {stages}. "
            f"Valid stages: {valid} ({len(layout.encoder)} encoder stages)"
            + (f", or names enc0..enc{layout.encoder[-1]}, dec0..dec{layout.decoder[-1]}." if layout.decoder else ".")
        ]
    return []


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


def _check_lang(profile: Any, config: dict[str, Any], label: str) -> list[str]:
    model, data = profile.model, profile.data
    errors = []
    width = output_width(config)
    if model.lang_dim is not None and model.lang_dim != width:
        errors.append(
            f"`model.lang_dim` must equal the backbone's output width ({width} for `{label}`), "
            f"got {model.lang_dim}. Remove `model.lang_dim` or change `model.backbone`."
        )
    if model.text_embeddings is not None and not Path(model.text_embeddings).is_file():
        fix = "(see `docs/scenesplat.md`)" if data.root is not None else ", or remove it for the synthetic table"
        errors.append(
            f"`model.text_embeddings` file not found, got {str(model.text_embeddings)!r}. "
            f"Point it at a [num_classes, D] .npy/.pt table {fix}."
        )
    if data.root is not None:
        split_dir = Path(data.root) / data.train_split
        scenes = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
        if scenes and not (scenes[0] / "lang_feat.npy").is_file():
            errors.append(
                f"`model.task` lang needs language features, got no `lang_feat.npy` in {scenes[0]}. "
                "Add lang_feat.npy (+ valid_feat_mask.npy) to every scene, or use `model.task: semseg`."
            )
        if model.text_embeddings is None and find_text_embeddings(profile) is None and data.val_split is not None:
            errors.append(
                "`model.text_embeddings` is needed for the lang task's zero-shot evaluation, got none "
                f"(and no text_embeddings.npy in {data.root}). Set it, or set `data.val_split` to null."
            )
    return errors
