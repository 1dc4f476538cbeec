"""Provides MIDI-3D's image conditioning: CLIP (1 token) and 7-channel DINOv2 (all tokens) encoders.

Encoders are the stock transformers classes (`CLIPVisionModelWithProjection`, `Dinov2Model`) loaded
from local folders only. Image pre-processing (resize, center crop, rescale, normalize) is done in
torch from the folder's `preprocessor_config.json`, so no processor object or network is needed.
Semantics follow VAST-AI-Research/MIDI-3D@b6ec9f6:midi/pipelines/pipeline_midi.py
(`encode_image_1`, `encode_image_2`, `_init_custom_adapter`) and scripts/inference_midi.py
(`split_rgb_mask`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import CheckpointError, DataError

__all__ = [
    "CLIP_DEFAULTS",
    "DINOV2_DEFAULTS",
    "ImagePreprocessor",
    "build_dinov2_input",
    "encode_clip_image",
    "encode_dinov2_image",
    "load_clip_image_encoder",
    "load_dinov2_image_encoder",
    "load_image_preprocessor",
    "split_instances",
    "widen_dinov2_patch_embed",
]

_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


@dataclass(frozen=True)
class ImagePreprocessor:
    """Torch re-implementation of the CLIP/Bit image processors' resize -> center crop -> normalize.

    Resizing uses torch's antialiased interpolation, so values differ slightly from the PIL path of
    the transformers processors (a few 1/255 steps at edges; see tests).
    """

    shortest_edge: int | None = 224  # resize so the short side has this length (None: see `size_hw`)
    size_hw: tuple[int, int] | None = None  # exact (height, width) resize instead of shortest_edge
    crop_hw: tuple[int, int] | None = (224, 224)  # center crop; None disables it
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255  # applied to uint8 input only; float input must already be in [0, 1]
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    do_normalize: bool = True
    extra: dict = field(default_factory=dict, compare=False)  # unused keys of the config, for reference

    @property
    def output_hw(self) -> tuple[int, int]:
        """(height, width) of the processed image for a square input."""
        if self.crop_hw is not None:
            return self.crop_hw
        if self.size_hw is not None:
            return self.size_hw
        assert self.shortest_edge is not None
        return (self.shortest_edge, self.shortest_edge)

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        if self.size_hw is not None:
            return self.size_hw
        if self.shortest_edge is None:
            return h, w
        s = self.shortest_edge
        # transformers' get_resize_output_image_size(default_to_square=False): int() truncation.
        return (s, int(s * w / h)) if h <= w else (int(s * h / w), s)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Process images.

        Args:
            images: (B, 3, H, W) uint8 in [0, 255], or float in [0, 1].

        Returns:
            (B, 3, h, w) float32 pixel values.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise DataError(
                f"image: expected a (B, 3, H, W) RGB batch, got shape {tuple(images.shape)!r}. "
                "Convert images to RGB (drop alpha) and stack them channels-first."
            )
        x = images.float() * self.rescale_factor if images.dtype == torch.uint8 else images.float()
        h, w = self._resized_hw(*x.shape[-2:])
        if (h, w) != tuple(x.shape[-2:]):
            kwargs = {} if self.resample == "nearest" else {"align_corners": False, "antialias": True}
            x = F.interpolate(x, size=(h, w), mode=self.resample, **kwargs).clamp(0.0, 1.0)
        if self.crop_hw is not None:
            ch, cw = self.crop_hw
            if ch > h or cw > w:
                pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
                x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
                h, w = x.shape[-2:]
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[..., top : top + ch, left : left + cw]
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, dtype=x.dtype).view(1, -1, 1, 1)
            std = torch.tensor(self.image_std, dtype=x.dtype).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x


CLIP_DEFAULTS = ImagePreprocessor()
"""transformers' CLIPImageProcessor defaults (224 short side, 224 crop, OpenAI CLIP mean/std)."""

DINOV2_DEFAULTS = ImagePreprocessor(
    shortest_edge=256, crop_hw=(224, 224), image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)
)
"""The preprocessor_config.json shipped with facebook/dinov2-* (256 short side, 224 crop, ImageNet mean/std)."""


def _hw(value: object, key: str, path: Path) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, dict) and "height" in value and "width" in value:
        return (int(value["height"]), int(value["width"]))
    raise CheckpointError(f"{path}: `{key}` must be an int or {{height, width}}, got {value!r}. Fix the file.")


def load_image_preprocessor(folder: str | Path | None, default: ImagePreprocessor = CLIP_DEFAULTS) -> ImagePreprocessor:
    """Read `preprocessor_config.json` from `folder` (a feature_extractor_* folder) into an ImagePreprocessor.

    Keys missing from the file keep the values of `default`; a missing folder or file gives `default`.
    """
    if folder is None or not (Path(folder) / "preprocessor_config.json").is_file():
        return default
    path = Path(folder) / "preprocessor_config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON, got {exc}. Re-download the feature extractor.") from exc
    shortest, size_hw = default.shortest_edge, default.size_hw
    if not cfg.get("do_resize", True):
        shortest, size_hw = None, None
    elif "size" in cfg:
        size = cfg["size"]
        if isinstance(size, dict) and "shortest_edge" in size:
            shortest, size_hw = int(size["shortest_edge"]), None
        else:
            shortest, size_hw = None, _hw(size, "size", path)
    crop = default.crop_hw
    if not cfg.get("do_center_crop", crop is not None):
        crop = None
    elif "crop_size" in cfg:
        crop = _hw(cfg["crop_size"], "crop_size", path)
    do_normalize = bool(cfg.get("do_normalize", default.do_normalize))
    return ImagePreprocessor(
        shortest_edge=shortest,
        size_hw=size_hw,
        crop_hw=crop,
        resample=_RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic"),
        rescale_factor=float(cfg.get("rescale_factor", default.rescale_factor)) if cfg.get("do_rescale", True) else 1.0,
        image_mean=tuple(cfg.get("image_mean", default.image_mean)),
        image_std=tuple(cfg.get("image_std", default.image_std)),
        do_normalize=do_normalize,
        extra={k: v for k, v in cfg.items() if k.startswith("_") or k.endswith("_type")},
    )


def _load_encoder(cls: type, folder: str | Path, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: missing `config.json` of a {cls.__name__}. Point to a complete encoder folder.")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.safetensors.index.json")):
        raise CheckpointError(
            f"{path}: no `model.safetensors` found, got {sorted(p.name for p in path.iterdir())!r}. "
            "Save the encoder with save_pretrained(safe_serialization=True)."
        )
    model = cls.from_pretrained(str(path), local_files_only=True, dtype=dtype, use_safetensors=True)
    return model.to(device).eval()


def load_clip_image_encoder(folder: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """Load a local `CLIPVisionModelWithProjection` folder (MIDI's `image_encoder_1/`)."""
    from transformers import CLIPVisionModelWithProjection  # lazy: transformers' model classes take seconds

    return _load_encoder(CLIPVisionModelWithProjection, folder, dtype, device)


def load_dinov2_image_encoder(folder: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """Load a local `Dinov2Model` folder (MIDI's `image_encoder_2/`, TripoSG's `image_encoder_dinov2/`)."""
    from transformers import Dinov2Model  # lazy: transformers' model classes take seconds

    return _load_encoder(Dinov2Model, folder, dtype, device)


def encode_clip_image(model: nn.Module, preprocessor: ImagePreprocessor, images: torch.Tensor) -> torch.Tensor:
    """MIDI branch 1: projected CLIP embedding of the instance image as one token.

    Args:
        model: a CLIPVisionModelWithProjection.
        preprocessor: its ImagePreprocessor.
        images: (B, 3, H, W) instance images (uint8, or float in [0, 1]).

    Returns:
        (B, 1, projection_dim) embeddings in the model's dtype.
    """
    param = next(model.parameters())
    pixels = preprocessor(images).to(param.device, param.dtype)
    return model(pixel_values=pixels).image_embeds.unsqueeze(1)


def _mask_to_float(masks: torch.Tensor) -> torch.Tensor:
    if masks.dim() == 3:
        masks = masks[:, None]
    if masks.dtype == torch.bool:
        return masks.float()
    if masks.dtype == torch.uint8:
        return masks.float() / 255.0
    return masks.float()


def build_dinov2_input(
    preprocessor: ImagePreprocessor,
    instance_images: torch.Tensor,
    scene_images: torch.Tensor,
    masks: torch.Tensor,
) -> torch.Tensor:
    """MIDI's 7-channel DINOv2 input: cat([proc(instance RGB), proc(scene RGB), mask], dim=1).

    NOTE: as in MIDI's `encode_image_2`, the mask is nearest-resized from the full frame straight to
    the processor's output size (no resize-then-crop), so with a center crop it is not pixel-aligned
    with the RGB channels. Fine-tuned MIDI weights expect exactly this.

    Args:
        preprocessor: the feature_extractor_2 ImagePreprocessor.
        instance_images: (B, 3, H, W) instance images (white outside the instance).
        scene_images: (B, 3, H, W) full scene images.
        masks: (B, 1, H, W) or (B, H, W): bool, uint8 in {0, 255}, or float in [0, 1].

    Returns:
        (B, 7, h, w) float32.
    """
    inst = preprocessor(instance_images)
    scene = preprocessor(scene_images)
    mask = F.interpolate(_mask_to_float(masks), size=inst.shape[-2:], mode="nearest")
    return torch.cat([inst, scene, mask], dim=1)


def encode_dinov2_image(
    model: nn.Module,
    preprocessor: ImagePreprocessor,
    images: torch.Tensor,
    scene_images: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """DINOv2 branch: all tokens of `last_hidden_state`.

    A 7-channel model (MIDI) gets `build_dinov2_input(images, scene_images, masks)`; a 3-channel
    model (TripoSG) gets the processed `images` only.

    Returns:
        (B, 1 + num_patches, hidden_size) in the model's dtype.
    """
    param = next(model.parameters())
    channels = int(model.config.num_channels)
    if channels == 3:
        pixels = preprocessor(images)
    elif channels == 7:
        if scene_images is None or masks is None:
            raise DataError(
                "image_encoder_2: a 7-channel DINOv2 needs `scene_images` and `masks`, got None. "
                "Pass the scene image and the instance mask (see split_instances)."
            )
        pixels = build_dinov2_input(preprocessor, images, scene_images, masks)
    else:
        raise CheckpointError(
            f"image_encoder_2: `num_channels` must be 3 or 7, got {channels!r}. Use a TripoSG or MIDI encoder."
        )
    return model(pixel_values=pixels.to(param.device, param.dtype)).last_hidden_state


@torch.no_grad()
def widen_dinov2_patch_embed(model: nn.Module, in_channels: int = 7, mode: str = "clone") -> nn.Module:
    """Widen a DINOv2 patch embedding from C to `in_channels` inputs in place, as MIDI does.

    The new filter is `[W[:, :3], extra...]` where the extra channels are filled, C at a time, with
    copies (`"clone"`) or zeros (`"zero"`) of `W[:, :min(C, left)]`; for 3 -> 7 with clone that is
    `[R G B | R G B | R]`. A model already at >= `in_channels` is returned unchanged.

    Source: VAST-AI-Research/MIDI-3D@b6ec9f6:midi/pipelines/pipeline_midi.py (`_init_custom_adapter`).
    """
    if mode not in ("clone", "zero"):
        raise ValueError(f"mode: must be 'clone' or 'zero', got {mode!r}.")
    patch = model.embeddings.patch_embeddings
    original = int(model.config.num_channels)
    if original >= in_channels:
        return model
    old: nn.Conv2d = patch.projection
    weight = old.weight
    parts = [weight[:, :3]]
    left = in_channels - 3
    while left > 0:
        piece = weight[:, : min(original, left)]
        parts.append(piece.clone() if mode == "clone" else torch.zeros_like(piece))
        left -= original
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
    ).to(device=weight.device, dtype=weight.dtype)
    new.weight.copy_(torch.cat(parts, dim=1))
    if old.bias is not None:
        new.bias.copy_(old.bias)
    patch.projection = new
    patch.num_channels = in_channels
    model.config.num_channels = in_channels
    return model


def split_instances(rgb: np.ndarray, id_map: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-instance images as MIDI's `split_rgb_mask` builds them: full frame, white outside the instance.

    Args:
        rgb: (H, W, 3) uint8 scene image.
        id_map: (H, W) integer instance ids; 0 is background.

    Returns:
        One `(instance_rgb (H, W, 3) uint8, mask (H, W) bool)` per id > 0, in ascending id order.
    """
    rgb = np.asarray(rgb)
    id_map = np.asarray(id_map)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or id_map.shape != rgb.shape[:2]:
        raise DataError(
            f"id map: shape must match the image's (H, W) = {rgb.shape[:2]}, got {id_map.shape!r}. "
            "Use the id map rendered with that image."
        )
    out = []
    for instance_id in np.unique(id_map):
        if instance_id <= 0:
            continue
        mask = id_map == instance_id
        inst = np.full_like(rgb, 255)
        inst[mask] = rgb[mask]
        out.append((inst, mask))
    return out
