"""Provides MIDI scene generation: image + instance id map -> one 3D scene file with a named mesh per instance.

Mirrors MIDI-3D's `scripts/inference_midi.py`: the id map is split into instance images (white outside
the instance) and masks, CLIP and 7-channel DINOv2 conditions are built, all instances are sampled jointly
with multi-instance attention and CFG (zero conditions), each latent set is decoded on a grid and meshed
with marching cubes; the meshes share the scene's frame, so the scene is their union.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from engine import input_limits
from engine.errors import CheckpointError, DataError, HardwareError
from engine.families.midi.latents import FrozenParts, encode_conditions
from engine.families.midi.options import resolve_mi_blocks
from engine.families.midi.render import instance_colors
from engine.families.midi.task import condition_kwargs, generate_latents
from engine.lora import load_lora_checkpoint, read_lora_checkpoint
from engine.models.dit.conditioning import split_instances
from engine.models.dit.mesh import MAX_OCTREE_RESOLUTION, extract_mesh
from engine.models.dit.pipeline import load_pipeline

__all__ = ["SCENE_SUFFIXES", "SceneInputs", "load_scene_inputs", "run_inference", "write_scene"]

SCENE_SUFFIXES = (".glb", ".obj", ".ply")
"""Output types: GLB and OBJ keep one named mesh per instance; PLY holds their union, coloured per instance."""

_log = logging.getLogger(__name__)


@dataclass
class SceneInputs:
    """A checked image and id map, split into instances (in ascending id order)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    id_map: np.ndarray  # (H, W) int
    ids: list[int]
    instance_images: torch.Tensor  # (n, 3, H, W) uint8
    scene_images: torch.Tensor  # (n, 3, H, W) uint8
    masks: torch.Tensor  # (n, H, W) bool


def _open_image(path: Path, what: str) -> Image.Image:
    # Bounded: the header's size is checked before Pillow decodes (a 100,000 x 100,000 PNG is 30 GB of pixels).
    return input_limits.open_image(path, what)


def _id_map(image: Image.Image, path: Path) -> np.ndarray:
    """Instance ids from a single-channel map, or from a colour map (each distinct non-black colour is one id)."""
    array = np.asarray(image)
    if array.ndim == 2:
        return array.astype(np.int64)
    array = array[..., :3]
    if (array == array[..., :1]).all():
        return array[..., 0].astype(np.int64)
    colours, inverse = np.unique(array.reshape(-1, 3), axis=0, return_inverse=True)
    background = np.flatnonzero((colours == 0).all(axis=1))
    ids = np.arange(1, len(colours) + 1)
    if len(background):
        ids = np.where(np.arange(len(colours)) < background[0], ids, ids - 1)
        ids[background[0]] = 0
    _log.info("%s: colour id map with %d colours mapped to ids", path, len(colours))
    return ids[inverse.reshape(-1)].reshape(array.shape[:2])


def load_scene_inputs(rgb_image: Path, seg_image: Path) -> SceneInputs:
    """Reads and checks the scene image and its instance id map (0 = background).

    Raises:
        DataError: a missing or unreadable file, an id map of another size, or one without instances.
    """
    rgb = np.asarray(_open_image(Path(rgb_image), "scene image").convert("RGB"))
    id_map = _id_map(_open_image(Path(seg_image), "segmentation image"), Path(seg_image))
    if id_map.shape != rgb.shape[:2]:
        raise DataError(
            f"{seg_image}: segmentation size must equal the image size {rgb.shape[1]}x{rgb.shape[0]} (WxH), got "
            f"{id_map.shape[1]}x{id_map.shape[0]}. Use the id map rendered with {Path(rgb_image).name}, or resize it "
            "with nearest-neighbour sampling."
        )
    ids = [int(i) for i in np.unique(id_map) if i > 0]
    if not ids:
        raise DataError(
            f"{seg_image}: the segmentation has no instances, got only background (0). Paint each object with its "
            "own id 1, 2, ... (0 = background)."
        )
    parts = split_instances(rgb, id_map)
    instance_images = torch.from_numpy(np.stack([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([p[1] for p in parts]))
    scene_images = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].expand(len(parts), -1, -1, -1).contiguous()
    return SceneInputs(rgb, id_map, ids, instance_images, scene_images, masks)


def _check_output(output: Path) -> None:
    """The scene file can be written: a known type, not a folder, in a folder (checked before any work)."""
    if output.is_dir():
        raise DataError(
            f"{output}: `--output` names a folder, got an existing folder. Name the scene file, e.g. "
            f"{output / 'result.glb'}."
        )
    if output.suffix.lower() not in SCENE_SUFFIXES:
        raise DataError(
            f"{output}: unknown scene file type, got {output.suffix or 'no suffix'!r}. Use one of "
            f"{', '.join(SCENE_SUFFIXES)} (e.g. result.glb)."
        )
    parent = next((p for p in output.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DataError(
            f"{output}: `--output` lies under {parent}, which is a file, not a folder. Choose a path in a folder."
        )


def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise HardwareError(f"`--device`: no CUDA GPU is visible, got {device!r}. Use `--device cpu` or `auto`.")
    return torch.device(device)


def _is_merged_transformer(path: Path) -> bool:
    if path.is_dir():
        return (path / "config.json").is_file() and any(path.glob("diffusion_pytorch_model*.safetensors"))
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                names = list(handle.keys())  # safe_open handles are not iterable
        except Exception as exc:  # SafetensorError and OSError: a truncated or foreign file
            raise CheckpointError(
                f"{path}: not a readable .safetensors file ({exc}). Pass the run's `adapter/` folder or a file "
                "written by `lora3d merge`."
            ) from None
        return not any("lora_" in key for key in names)
    return False


def apply_weights(dit: nn.Module, path: Path) -> dict:
    """Puts an adapter (PEFT folder, .safetensors, .pth) or a merged transformer (folder or file) into `dit`.

    Returns:
        The adapter's lora3d user metadata (empty for a merged model).
    """
    if not path.exists():
        raise CheckpointError(
            f"{path}: LoRA weights not found, got {str(path)!r}. Pass the run's `adapter/` folder (or a merged "
            "transformer) to `--lora_path`."
        )
    if _is_merged_transformer(path):
        file = path if path.is_file() else sorted(path.glob("diffusion_pytorch_model*.safetensors"))[0]
        state = load_file(str(file))
        try:
            dit.load_state_dict({k: v.to(next(dit.parameters()).dtype) for k, v in state.items()}, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(
                f"{path}: merged transformer does not fit this base model, got {str(exc).splitlines()[0]}. "
                "Use the `--pretrained` folder it was merged from."
            ) from None
        return {}
    _, meta, _ = read_lora_checkpoint(path)
    load_lora_checkpoint(dit, path)
    dit.requires_grad_(False)
    return dict(meta.get("user") or {})


def write_scene(meshes: list, names: list[str], output: Path) -> Path:
    """Writes one scene file: GLB/OBJ with a named mesh per instance, PLY as the coloured union (atomic)."""
    _check_output(output)
    colors = instance_colors(len(meshes))
    scene = trimesh.Scene()
    for mesh, name, color in zip(meshes, names, colors):
        if len(mesh.faces) == 0:
            _log.warning("%s: no surface was generated for %s; it is left out of the scene", output, name)
            continue
        mesh = mesh.copy()
        mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=np.append(color[:3], 255).astype(np.uint8))
        scene.add_geometry(mesh, node_name=name, geom_name=name)
    if not scene.geometry:
        raise DataError(
            f"{output}: no instance produced a surface, got {len(meshes)} empty meshes. Raise `--steps` or "
            "`--octree_resolution`, or check that `--pretrained` is a trained model."
        )
    suffix = output.suffix.lower()
    tmp = output.with_name(f".{output.stem}.{uuid.uuid4().hex}{suffix}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".ply":
            trimesh.util.concatenate(list(scene.dump())).export(tmp)
        else:
            scene.export(tmp, file_type=suffix[1:])
        os.replace(tmp, output)
    except OSError as exc:
        raise DataError(
            f"{output}: the scene file cannot be written, got {exc.strerror or exc}. Check that the folder is "
            "writable and has free space; nothing was written."
        ) from None
    finally:
        tmp.unlink(missing_ok=True)  # a failed export leaves no hidden partial file
    return output


@torch.no_grad()
def run_inference(
    pretrained: Path,
    lora_path: Path | None,
    rgb_image: Path,
    seg_image: Path,
    output: Path,
    steps: int = 50,
    guidance_scale: float = 7.0,
    seed: int = 0,
    octree_resolution: int = 128,
    device: str | None = "auto",
    num_tokens: int | None = None,
) -> Path:
    """Generates a 3D scene from a scene image and its instance segmentation.

    Args:
        pretrained: MIDI-3D (or TripoSG) pipeline folder.
        lora_path: adapter folder/file from `lora3d train`, a merged transformer, or None for the base.
        rgb_image: the scene image.
        seg_image: the instance id map (0 background, 1..n instances; a colour map also works).
        output: `.glb`, `.obj` or `.ply` scene file.
        steps: sampling steps.
        guidance_scale: CFG scale (<= 1 disables CFG).
        seed: seed of the initial noise.
        octree_resolution: marching-cubes grid cells per axis.
        device: `auto`, `cpu` or `cuda[:i]`.
        num_tokens: latent tokens per instance; default the adapter's training value, else the DiT width (MIDI).

    Returns:
        The written scene file.
    """
    output = Path(output)
    _check_output(output)
    for name, value, limit in (("--steps", steps, 10_000), ("--octree_resolution", octree_resolution,
                                                              MAX_OCTREE_RESOLUTION)):
        if not 1 <= value <= limit:
            raise DataError(
                f"`{name}`: must be an integer in 1..{limit}, got {value!r}. Use e.g. 50 steps, resolution 128."
            )
    inputs = load_scene_inputs(Path(rgb_image), Path(seg_image))
    target = _resolve_device(device)
    dtype = torch.float16 if target.type == "cuda" else torch.float32
    pipe = load_pipeline(pretrained, dtype=dtype, device=target)
    dit = pipe.transformer
    meta = apply_weights(dit, Path(lora_path)) if lora_path else {}
    dit.set_multi_instance_attention(meta.get("mi_blocks", resolve_mi_blocks(None, len(dit.blocks))))
    dit.to(target).eval()
    tokens = num_tokens or int(meta.get("num_tokens") or dit.config.width)
    frozen = FrozenParts(vae=pipe.vae, dino=pipe.dino, clip=pipe.clip, dino_preprocessor=pipe.dino_preprocessor,
                         clip_preprocessor=pipe.clip_preprocessor, kind=pipe.kind)
    clip, dino = encode_conditions(frozen, inputs.instance_images.to(target), inputs.scene_images.to(target),
                                   inputs.masks.to(target))
    condition_kwargs(dit, clip, dino)  # fails early on a condition/DiT width mismatch
    generator = torch.Generator().manual_seed(seed)
    latents = generate_latents(dit, clip, dino, tokens, steps, guidance_scale, generator)
    meshes = extract_mesh(pipe.vae, latents.to(dtype), octree_resolution=octree_resolution)
    return write_scene(meshes, [f"instance_{i:03d}" for i in inputs.ids], output)
