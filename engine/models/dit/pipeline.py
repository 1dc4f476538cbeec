"""Provides local loading of MIDI-3D / TripoSG diffusers folders, and a tiny random MIDI folder for tests.

Layouts (reference/midi.md §3.4; MIDIPipeline.__init__ at VAST-AI-Research/MIDI-3D@b6ec9f6):

    MIDI-3D: model_index.json transformer/ vae/ scheduler/ image_encoder_1/ (CLIP) image_encoder_2/ (DINOv2,
             7 channels) feature_extractor_1/ feature_extractor_2/
    TripoSG: model_index.json transformer/ vae/ scheduler/ image_encoder_dinov2/ feature_extractor_dinov2/

Nothing is downloaded: every component loads from the folder with local files only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from engine.errors import CheckpointError
from engine.models.dit.conditioning import (
    CLIP_DEFAULTS,
    DINOV2_DEFAULTS,
    ImagePreprocessor,
    load_clip_image_encoder,
    load_dinov2_image_encoder,
    load_image_preprocessor,
    widen_dinov2_patch_embed,
)
from engine.models.dit.flow import RectifiedFlowScheduler
from engine.models.dit.transformer import TripoSGDiTModel
from engine.models.dit.vae import TripoSGVAEModel

__all__ = ["LAYOUTS", "Pipeline", "build_tiny_pipeline", "detect_pipeline_kind", "load_pipeline"]

logger = logging.getLogger(__name__)

LAYOUTS: dict[str, dict[str, str | None]] = {
    "midi": {
        "class_name": "MIDIPipeline",
        "clip": "image_encoder_1",
        "dino": "image_encoder_2",
        "clip_processor": "feature_extractor_1",
        "dino_processor": "feature_extractor_2",
    },
    "triposg": {
        "class_name": "TripoSGPipeline",
        "clip": None,
        "dino": "image_encoder_dinov2",
        "clip_processor": None,
        "dino_processor": "feature_extractor_dinov2",
    },
}
"""Subfolder names per hub layout (transformer/, vae/ and scheduler/ are common to both)."""

_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")
_VARIANTS = ("fp16", "bf16")


@dataclass
class Pipeline:
    """The loaded components of a MIDI-3D or TripoSG folder."""

    transformer: nn.Module  # engine.models.dit.transformer.TripoSGDiTModel
    vae: TripoSGVAEModel
    clip: nn.Module | None  # CLIPVisionModelWithProjection (MIDI) or None (TripoSG)
    dino: nn.Module  # Dinov2Model, 7 input channels for MIDI
    scheduler_config: dict[str, Any]
    kind: str = "midi"  # "midi" | "triposg"
    clip_preprocessor: ImagePreprocessor | None = None
    dino_preprocessor: ImagePreprocessor = DINOV2_DEFAULTS
    folder: Path | None = None


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing {what}. Point to a complete MIDI-3D or TripoSG folder.")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON, got {exc}. Re-download or re-save the folder.") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__!r}. Re-save the folder.")
    return data


def detect_pipeline_kind(folder: str | Path) -> str:
    """Return "midi" or "triposg" from `model_index.json` (`_class_name`, else the component names)."""
    index = _read_json(Path(folder) / "model_index.json", "`model_index.json`")
    name = str(index.get("_class_name", ""))
    for kind, layout in LAYOUTS.items():
        if name == layout["class_name"]:
            return kind
    for kind, layout in LAYOUTS.items():
        if layout["dino"] in index:
            return kind
    raise CheckpointError(
        f"{Path(folder) / 'model_index.json'}: unknown pipeline `_class_name`, got {name!r}. "
        "Use a MIDIPipeline or TripoSGPipeline folder."
    )


def _require_dir(folder: Path, sub: str) -> Path:
    path = folder / sub
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: missing subfolder `{sub}/`, got {sorted(p.name for p in folder.iterdir())!r}. "
            "Download the complete model folder (every component of model_index.json)."
        )
    return path


def _weight_variant(path: Path) -> str | None:
    """None for the plain file name, or the variant tag of `diffusion_pytorch_model.<variant>.safetensors`."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path / 'config.json'}: missing file. Re-download `{path.name}/`.")
    if any((path / name).is_file() for name in _WEIGHT_NAMES):
        return None
    for variant in _VARIANTS:
        if (path / f"diffusion_pytorch_model.{variant}.safetensors").is_file():
            return variant
    raise CheckpointError(
        f"{path / _WEIGHT_NAMES[0]}: missing file, got {sorted(p.name for p in path.iterdir())!r}. "
        "Re-download the weights, or re-save them with save_pretrained(safe_serialization=True)."
    )


def _check_keys(model: nn.Module, path: Path, variant: str | None) -> None:
    """Fail when the saved tensors do not cover the model exactly (diffusers may only warn)."""
    files = sorted(path.glob("*.safetensors"))
    if variant is None:
        files = [f for f in files if not any(f".{v}." in f.name for v in _VARIANTS)]
    saved: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            saved.update(handle.keys())
    expected = set(model.state_dict().keys())
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match config.json, got {len(missing)} missing keys (e.g. {missing[:3]!r}) and "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]!r}). Use weights saved with this config."
        )


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hides transformers' per-model "Loading weights" / "Writing model shards" bars, restoring the setting after."""
    from transformers.utils import logging as hf_logging  # lazy: transformers takes seconds to import

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_diffusers_model(cls: type, path: Path, dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    variant = _weight_variant(path)
    try:
        model = cls.from_pretrained(
            str(path), torch_dtype=dtype, variant=variant, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: could not load {cls.__name__}, got {exc}. Check the folder's files.") from exc
    _check_keys(model, path, variant)
    return model.to(device).eval()


def _check_sizes(pipe: Pipeline) -> None:
    """Cross-component shape agreement: latent width and the conditioning widths the DiT expects."""
    dit, vae = pipe.transformer.config, pipe.vae.config
    if dit.in_channels != vae.latent_channels:
        raise CheckpointError(
            f"transformer/config.json: `in_channels` must equal vae `latent_channels`, got "
            f"{dit.in_channels!r} vs {vae.latent_channels!r}. Use a transformer and VAE from the same model."
        )
    if pipe.kind == "midi":
        pairs = [
            ("cross_attention_dim", dit.cross_attention_dim, "image_encoder_1 `projection_dim`",
             pipe.clip.config.projection_dim),
            ("cross_attention_2_dim", dit.cross_attention_2_dim, "image_encoder_2 `hidden_size`",
             pipe.dino.config.hidden_size),
        ]
    else:
        pairs = [("cross_attention_dim", dit.cross_attention_dim, "image_encoder_dinov2 `hidden_size`",
                  pipe.dino.config.hidden_size)]
    for key, got, other, want in pairs:
        if got != want:
            raise CheckpointError(
                f"transformer/config.json: `{key}` must equal {other}, got {got!r} vs {want!r}. "
                "Use encoders from the same model folder."
            )


def load_pipeline(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    dino_channels: int | None = None,
    widen_mode: str = "clone",
) -> Pipeline:
    """Load every component of a local MIDI-3D or TripoSG folder.

    Weights stored in fp16, bf16 or fp32 (plain, `.fp16`/`.bf16` variants, or sharded) are cast to
    `dtype`. A MIDI DINOv2 with fewer than `dino_channels` (default 7 for MIDI) input channels is
    widened with `widen_mode`, as MIDI's `_init_custom_adapter` does.

    Raises:
        CheckpointError: a missing subfolder/file, unreadable JSON, weights that do not match their
            config, or components whose widths disagree; the message names the path.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: model folder not found, got {str(folder)!r}. Pass a local model folder.")
    kind = detect_pipeline_kind(root)
    layout = LAYOUTS[kind]
    # 1. Check the layout before loading anything heavy, so the first missing piece is named.
    for sub in ("transformer", "vae", "scheduler", layout["clip"], layout["dino"]):
        if sub is not None:
            _require_dir(root, sub)
    scheduler_config = _read_json(root / "scheduler" / "scheduler_config.json", "`scheduler_config.json`")
    # 2. Diffusers models.
    transformer = _load_diffusers_model(TripoSGDiTModel, root / "transformer", dtype, device)
    vae = _load_diffusers_model(TripoSGVAEModel, root / "vae", dtype, device)
    # 3. Image encoders and their pre-processing.
    with _quiet_transformers():
        clip = load_clip_image_encoder(root / layout["clip"], dtype, device) if layout["clip"] else None
        dino = load_dinov2_image_encoder(root / layout["dino"], dtype, device)
    if kind == "midi":
        want = dino_channels or 7
        if dino.config.num_channels < want:
            logger.warning("image_encoder_2: widening DINOv2 from %d to %d channels (%s)",
                           dino.config.num_channels, want, widen_mode)
            widen_dinov2_patch_embed(dino, want, widen_mode)
    clip_pre = load_image_preprocessor(root / layout["clip_processor"], CLIP_DEFAULTS) if layout["clip"] else None
    dino_pre = load_image_preprocessor(root / layout["dino_processor"], DINOV2_DEFAULTS)
    pipe = Pipeline(transformer, vae, clip, dino, scheduler_config, kind, clip_pre, dino_pre, root)
    _check_sizes(pipe)
    return pipe


def build_tiny_pipeline(
    folder: str | Path,
    seed: int = 0,
    kind: str = "midi",
    dtype: torch.dtype = torch.float32,
    image_size: int = 28,
) -> Path:
    """Write a tiny random pipeline folder in the real on-disk layout (for tests and the demo).

    Sizes: DiT width 32, 2 heads, 3 layers, 8 latent channels; VAE width 32; CLIP and DINOv2 with
    hidden size 16/24, patch 14, `image_size` pixels (processors resize and crop to it).

    Args:
        folder: destination (created).
        seed: weight seed; the global torch RNG is left untouched.
        kind: "midi" (CLIP + 7-channel DINOv2, two cross-attentions) or "triposg" (DINOv2 only).
        dtype: dtype of the saved weights.
        image_size: the encoders' input resolution.

    Returns:
        The folder.
    """
    # lazy: diffusers' and transformers' model classes take seconds to import
    import diffusers
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
    )

    if kind not in LAYOUTS:
        raise ValueError(f"kind: must be one of {sorted(LAYOUTS)}, got {kind!r}.")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    layout = LAYOUTS[kind]
    clip_dim, dino_dim, latent = 16, 24, 8
    processor_kwargs = {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dino = Dinov2Model(Dinov2Config(hidden_size=dino_dim, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=48, image_size=image_size, patch_size=14))
        if kind == "midi":
            widen_dinov2_patch_embed(dino, 7, "clone")
            clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=14, projection_dim=clip_dim))
            dit = TripoSGDiTModel(num_attention_heads=2, width=32, in_channels=latent, num_layers=3,
                                  cross_attention_dim=clip_dim, use_cross_attention_2=True,
                                  cross_attention_2_dim=dino_dim)
        else:
            clip = None
            dit = TripoSGDiTModel(num_attention_heads=2, width=32, in_channels=latent, num_layers=3,
                                  cross_attention_dim=dino_dim)
        vae = TripoSGVAEModel(latent_channels=latent, num_attention_heads=2, width_encoder=32, width_decoder=32,
                              num_layers_encoder=1, num_layers_decoder=2)
    # nn.Module.to: ModelMixin.to warns about fp32-kept modules, which these models do not have.
    nn.Module.to(dit, dtype).save_pretrained(root / "transformer")
    nn.Module.to(vae, dtype).save_pretrained(root / "vae")
    RectifiedFlowScheduler().save_pretrained(root / "scheduler")
    with _quiet_transformers():
        dino.to(dtype).save_pretrained(root / layout["dino"])
    BitImageProcessor(image_mean=list(DINOV2_DEFAULTS.image_mean), image_std=list(DINOV2_DEFAULTS.image_std),
                      **processor_kwargs).save_pretrained(root / layout["dino_processor"])
    index: dict[str, Any] = {
        "_class_name": layout["class_name"],
        "_diffusers_version": diffusers.__version__,
        "transformer": ["engine.models.dit.transformer", "TripoSGDiTModel"],
        "vae": ["engine.models.dit.vae", "TripoSGVAEModel"],
        "scheduler": ["engine.models.dit.flow", "RectifiedFlowScheduler"],
        layout["dino"]: ["transformers", "Dinov2Model"],
        layout["dino_processor"]: ["transformers", "BitImageProcessor"],
    }
    if clip is not None:
        with _quiet_transformers():
            clip.to(dtype).save_pretrained(root / layout["clip"])
        CLIPImageProcessor(**processor_kwargs).save_pretrained(root / layout["clip_processor"])
        index[layout["clip"]] = ["transformers", "CLIPVisionModelWithProjection"]
        index[layout["clip_processor"]] = ["transformers", "CLIPImageProcessor"]
    (root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return root
