"""Provides the Sonata family's profile keys and their resolution into `SonataOptions`, checked once.

What the family adds to a profile (`model.*`, `data.*`, `lora.*`) is declared in the three pydantic
models; `resolve_options` turns a resolved profile into the frozen options every other module of the
family reads, and `check_profile` lists every problem at once.

Training regimes, as Pointcept names its configs: `ft-lora` (LoRA on the frozen encoder + a new head:
presets `pointcept-lora`, `attn`, `attn+mlp`), `lin` (linear probing: `lora.target_modules: []`, preset
`linear`, only the head trains), `dec` (a `*-decoder` backbone: the decoder, new to a pretraining
checkpoint, trains in full with the head, with or without LoRA on the encoder) and `ft` (`lora.method: full`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES
from engine.lora.targets import StageLayout
from engine.models.sonata import CONCERTO_LARGE_CONFIG, SONATA_BASE_CONFIG, SONATA_BASE_DECODER_CONFIG

IN_CHANNELS = 9
"""coord(3) + color(3) + normal(3): Sonata's input (`Collect(feat_keys=("coord", "color", "normal"))`)."""

TARGET_GROUPS = ("qkv", "attn", "mlp")
"""`lora.target_modules` groups on PT-v3m2 (engine.lora.targets); an empty list trains no adapter."""

LOSSES = ("cross_entropy", "lovasz")
"""Loss names `model.losses` takes (Pointcept's `CrossEntropyLoss` and `LovaszLoss(mode="multiclass")`)."""

POINTCEPT_LOSSES: dict[str, float] = {"cross_entropy": 1.0, "lovasz": 1.0}
"""The criteria of every Sonata/Concerto semseg config: CE + Lovász, weight 1 each, ignore_index -1."""

DEMO_TINY_CONFIG: dict[str, Any] = dict(
    in_channels=IN_CHANNELS,
    order=("z", "z-trans"),
    stride=(2, 2),
    enc_depths=(1, 1, 1),
    enc_channels=(16, 32, 64),
    enc_num_head=(1, 2, 4),
    enc_patch_size=(128, 128, 128),
    mlp_ratio=2,
    drop_path=0.0,
    shuffle_orders=False,
    enable_flash=False,
    enc_mode=True,
)
"""A three-stage PT-v3m2 of about 0.2M parameters with the concatenated head (112 channels): the demo's base."""

BACKBONES: dict[str, dict[str, Any]] = {
    "sonata-base": SONATA_BASE_CONFIG,
    "sonata-base-decoder": SONATA_BASE_DECODER_CONFIG,
    # Concerto base has Sonata base's shape (Pointcept configs/concerto/pretrain-concerto-v1m1-0-base.py).
    "concerto-base": SONATA_BASE_CONFIG,
    "concerto-large": CONCERTO_LARGE_CONFIG,
    "demo-tiny": DEMO_TINY_CONFIG,
}
"""Named backbones (`model.backbone`): PointTransformerV3M2 keyword arguments."""

BackboneName = Literal["sonata-base", "sonata-base-decoder", "concerto-base", "concerto-large", "demo-tiny"]


class SonataModelOptions(BaseModel):
    """`model.*` keys of a sonata profile."""

    model_config = ConfigDict(extra="forbid")

    backbone: BackboneName | dict[str, Any] = Field(
        default="sonata-base",
        description="PT-v3m2 architecture: `sonata-base` / `concerto-base` (concatenated multi-level head, 1232 "
        "channels), `sonata-base-decoder` (decoder head, 64 channels), `concerto-large` (1728 channels), `demo-tiny`, "
        "or a mapping of PointTransformerV3M2 keyword arguments (`enc_mode: false` for a decoder).",
    )
    num_classes: int | None = Field(
        default=None, ge=1, le=100_000,
        description="Classes of the head; empty = len(`class_names`), or 6 for the synthetic rooms.",
    )
    class_names: list[str] | None = Field(default=None, description="Class names for per-class metrics.")
    ignore_index: int = Field(default=-1, description="Label value that is not trained or counted.")
    losses: dict[Literal["cross_entropy", "lovasz"], float] = Field(
        default_factory=lambda: dict(POINTCEPT_LOSSES),
        description="Loss name -> weight, summed (Pointcept's configs: cross_entropy 1 + lovasz 1).",
    )
    train_decoder: bool | None = Field(
        default=None,
        description="Train the decoder in full with the head (a pretraining checkpoint has none); empty = yes "
        "when the backbone has a decoder.",
    )
    checkpoint_prefix: str | None = Field(
        default=None,
        description="Read the backbone from keys under this prefix (checkpoints of layouts lora3d does not detect).",
    )
    fg_exclude: list[str] = Field(default_factory=lambda: ["wall", "floor", "ceiling"],
                                  description="Classes left out of `fg_miou` / `fg_macc`.")
    demo_base: bool = Field(
        default=False,
        description="With an empty `model.pretrained`: load the demo's tiny base pretrained on synthetic rooms A "
        "(built and cached under $LORA3D_CACHE on first use). Needs `backbone: demo-tiny`.",
    )


class SonataDataOptions(BaseModel):
    """`data.*` keys of a sonata profile."""

    model_config = ConfigDict(extra="forbid")

    grid_size: float = Field(default=0.02, gt=0, le=100, description="Voxel edge in metres (Sonata: 0.02).")
    point_budget: int | None = Field(
        default=None, ge=64, le=100_000_000,
        description="Keep at most this many points per scene after voxelisation (Sonata's SphereCrop: 102400).",
    )
    label_key: Literal["segment", "segment20", "segment200"] = Field(
        default="segment20", description="Label file that becomes `segment` (Pointcept's ScanNet: segment20/200)."
    )
    augment: bool = Field(default=True, description="Train augmentations (rotate, scale, flip, jitter, colour).")
    loop: int = Field(default=1, ge=1, le=10_000, description="Passes over the training scenes per epoch.")
    synthetic_domain: Literal["A", "B"] = Field(default="B", description="Built-in data: appearance domain.")
    synthetic_train: int = Field(default=8, ge=1, le=10_000, description="Built-in data: training rooms.")
    synthetic_val: int = Field(default=4, ge=0, le=10_000, description="Built-in data: validation rooms.")
    synthetic_points: int = Field(default=6000, ge=64, le=10_000_000, description="Built-in data: points per room (A).")
    synthetic_seed: int = Field(default=0, ge=0, description="Built-in data: seed of the rooms.")
    synthetic_shift: float = Field(
        default=1.0, ge=0, le=1, description="Built-in data: how far domain B's look moves from A's (0..1)."
    )


class SonataLoraOptions(BaseModel):
    """`lora.*` keys of a sonata profile: where in the PT-v3m2 the adapters go."""

    model_config = ConfigDict(extra="forbid")

    target_stages: list[int | str] | None = Field(
        default=None,
        description="Stages to adapt: encoder indices (and the same decoder index unless `encoder_only`), or names "
        "`enc2`, `dec0`; empty = every stage (Pointcept adapts every encoder stage).",
    )
    encoder_only: bool = Field(default=True, description="Adapt encoder stages only (Pointcept's choice).")


@dataclass(frozen=True)
class SonataOptions:
    """What the family derives from a resolved profile, once.

    Attributes:
        backbone: PointTransformerV3M2 keyword arguments.
        backbone_label: the `model.backbone` name, or `custom` for a mapping.
        num_classes: classes of the head.
        class_names: names for per-class metrics.
        pretrained: the base checkpoint (the cached demo base with `model.demo_base`), or None.
        train_decoder: the decoder trains in full with the head.
        losses: (name, weight) pairs, summed.
    """

    backbone: dict[str, Any]
    backbone_label: str
    num_classes: int
    class_names: tuple[str, ...]
    pretrained: Path | None
    train_decoder: bool
    losses: tuple[tuple[str, float], ...]

    @property
    def enc_mode(self) -> bool:
        return bool(self.backbone.get("enc_mode", False))

    @property
    def head_channels(self) -> int:
        return head_channels(self.backbone)

    @property
    def layout(self) -> StageLayout:
        return stage_layout(self.backbone)

    @property
    def trained_modules(self) -> tuple[str, ...]:
        """Modules trained in full next to the adapter: the head, and the decoder when it trains."""
        return ("seg_head", "backbone.dec") if self.train_decoder else ("seg_head",)


def backbone_config(backbone: str | dict[str, Any]) -> dict[str, Any]:
    """The PointTransformerV3M2 keyword arguments `model.backbone` names (a copy)."""
    return dict(backbone) if isinstance(backbone, dict) else dict(BACKBONES[backbone])


def head_channels(config: dict[str, Any]) -> int:
    """Width of the features the head reads: every encoder level concatenated (enc_mode), else dec_channels[0]."""
    if config.get("enc_mode", False):
        return int(sum(config.get("enc_channels", (32, 64, 128, 256, 512))))
    return int(config.get("dec_channels", (64, 64, 128, 256))[0])


def stage_layout(config: dict[str, Any]) -> StageLayout:
    """The encoder and decoder stages a backbone config builds (what stage selections resolve against)."""
    stages = len(config.get("enc_depths", (2, 2, 2, 6, 2)))
    decoder = () if config.get("enc_mode", False) else tuple(range(stages - 1))
    return StageLayout("", tuple(range(stages)), decoder)


def resolve_options(profile: Any, pretrained: Path | None) -> SonataOptions:
    """The options of a checked profile (`check_profile` returned no problem)."""
    model = profile.model
    config = backbone_config(model.backbone)
    num_classes = model.num_classes or (len(model.class_names) if model.class_names else len(SYNTHETIC_CLASSES))
    if model.class_names:
        names = tuple(model.class_names)
    elif profile.data.root is None:
        names = tuple(SYNTHETIC_CLASSES) + tuple(f"class_{i}" for i in range(len(SYNTHETIC_CLASSES), num_classes))
    else:
        names = tuple(f"class_{i}" for i in range(num_classes))
    has_decoder = not config.get("enc_mode", False)
    return SonataOptions(
        backbone=config,
        backbone_label="custom" if isinstance(model.backbone, dict) else model.backbone,
        num_classes=num_classes,
        class_names=names,
        pretrained=pretrained,
        train_decoder=has_decoder if model.train_decoder is None else model.train_decoder,
        losses=tuple((name, float(weight)) for name, weight in model.losses.items()),
    )


def check_profile(profile: Any) -> list[str]:
    """Every cross-key problem of a sonata profile (task filled in, preset applied)."""
    errors: list[str] = []
    model, lora, data = profile.model, profile.lora, profile.data
    config = backbone_config(model.backbone)
    label = "custom" if isinstance(model.backbone, dict) else model.backbone
    if isinstance(model.backbone, dict):
        if "enc_depths" not in config:
            return [
                f"`model.backbone` mapping needs `enc_depths` (one entry per stage), got keys {sorted(config)!r}. "
                "Give the PointTransformerV3M2 keyword arguments of your checkpoint (e.g. its Pointcept config)."
            ]
        if config.get("in_channels", 6) != IN_CHANNELS:
            errors.append(
                f"`model.backbone.in_channels` must be {IN_CHANNELS} (coord 3 + color 3 + normal 3), "
                f"got {config.get('in_channels', 6)!r}. Set `in_channels: {IN_CHANNELS}`."
            )
    layout = stage_layout(config)
    if lora.target_modules is not None:
        unknown = [m for m in lora.target_modules if m not in TARGET_GROUPS]
        if unknown:
            errors.append(
                f"`lora.target_modules` must be a subset of {', '.join(f'`{g}`' for g in TARGET_GROUPS)} for PT-v3m2, "
                f"got {lora.target_modules!r}. Use [qkv] (Pointcept's LoRA), [attn], [attn, mlp], or [] for linear "
                "probing."
            )
    if lora.target_stages is not None:
        errors.extend(_check_stages(lora.target_stages, layout, label))
    if model.train_decoder and not layout.decoder:
        errors.append(
            f"`model.train_decoder` needs a backbone with a decoder, got `{label}` (enc_mode: concatenated levels). "
            "Use a `*-decoder` backbone or remove `model.train_decoder`."
        )
    if not model.losses or any(w <= 0 for w in model.losses.values()):
        errors.append(
            f"`model.losses` must map at least one of {', '.join(f'`{n}`' for n in LOSSES)} to a positive weight, "
            f"got {model.losses!r}. Use {{cross_entropy: 1.0, lovasz: 1.0}} (Pointcept's)."
        )
    if model.demo_base and model.pretrained is None and label != "demo-tiny":
        errors.append(
            f"`model.demo_base` needs `model.backbone: demo-tiny`, got {label!r}. "
            "Set the backbone to demo-tiny or turn `model.demo_base` off."
        )
    if model.num_classes is None and not model.class_names and data.root is not None:
        errors.append(
            "`model.num_classes` is required with a `data.root`, got none. "
            "Set it to the number of classes in your labels (20 for ScanNet `segment20`, 200 for `segment200`)."
        )
    if model.class_names and model.num_classes is not None and len(model.class_names) != model.num_classes:
        errors.append(
            f"`model.class_names` has {len(model.class_names)} names but `model.num_classes` is "
            f"{model.num_classes}, got {model.class_names!r}. Make them agree (change either key)."
        )
    if data.root is None and model.num_classes is not None and model.num_classes < len(SYNTHETIC_CLASSES):
        errors.append(
            f"`model.num_classes` must be at least {len(SYNTHETIC_CLASSES)} for the built-in synthetic rooms "
            f"({', '.join(SYNTHETIC_CLASSES)}), got {model.num_classes}. Raise it or set `data.root`."
        )
    return errors


def _check_stages(stages: list[int | str], layout: StageLayout, label: str) -> list[str]:
    if len(set(map(str, stages))) != len(stages):
        return [f"`lora.target_stages` lists a stage twice, got {stages}."]
    valid = {f"enc{s}" for s in layout.encoder} | {f"dec{s}" for s in layout.decoder}
    bad = [s for s in stages if (isinstance(s, int) and s not in layout.encoder) or (isinstance(s, str) and s not in valid)]
    if bad:
        return [
            f"`lora.target_stages` lists stage(s) {bad} that the `{label}` backbone does not have, got {stages}. "
            f"Valid stages: {layout.describe()} (or names {', '.join(sorted(valid))})."
        ]
    return []
