"""Provides the golden-vector cases of the GPU check: every set under tests/golden/, runnable on any device.

Each case builds the model from the stored config and weights, runs the stored inputs on the device
(optionally under autocast) and returns `{label: (got, reference)}`; labels ending in `[int]` must match
exactly. Each case imports its model when it runs (lazy), so the spconv-only device call, which carries no
diffusers or pydantic, can run the PTv3 sets. The fp32 tolerances are the CPU tests' own (tests/golden/*/README.md); the conv backend is a
parameter so the spconv section can rerun the sets whose stems are sparse convolutions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

Outputs = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class GoldenCase:
    """One golden comparison.

    Attributes:
        name: what the report calls it.
        run: (golden root, device, conv backend) -> outputs; runs inside the caller's autocast.
        atol: absolute tolerance in fp32 (the CPU test's).
        rtol: relative tolerance in fp32 (the CPU test's; 0 for the PTv3 sets, which use atol only).
        sparse_conv: whether the model has sparse convolutions (rerun with spconv).
    """

    name: str
    run: Callable[[Path, str, str], Outputs]
    atol: float
    rtol: float
    sparse_conv: bool = False


def _to(data: dict[str, torch.Tensor], keys: tuple[str, ...], device: str) -> dict[str, torch.Tensor]:
    return {k: data[k].to(device) for k in keys}


# ------------------------------------------------------------------------------ PT-v3m1 (SceneSplat)
def _ptv3(enable_flash: bool) -> Callable[[Path, str, str], Outputs]:
    def run(golden: Path, device: str, conv: str) -> Outputs:
        from engine.models.ptv3 import PointTransformerV3  # lazy: see the module docstring

        root = golden / "ptv3"
        cfg = json.loads((root / "config.json").read_text())
        cfg.pop("notes")
        io = load_file(root / "io.safetensors")
        model = PointTransformerV3(**{**cfg, "enable_flash": enable_flash}, sparse_conv_backend=conv,
                                   attention_backend="sdpa")
        model.load_state_dict(load_file(root / "weights.safetensors"), strict=True)
        model.eval().to(device)
        with torch.no_grad():
            out = model(_to(io, ("coord", "grid_coord", "feat", "offset"), device))
        suffix = "_flash_semantics" if enable_flash else ""
        return {"out_feat": (out.feat, io["out_feat" + suffix]),
                "serialized_code [int]": (out.serialized_code, io["serialized_code"])}

    return run


# ------------------------------------------------------------------------------ PT-v3m2 (Sonata)
def _sonata(enable_flash: bool, lora: bool) -> Callable[[Path, str, str], Outputs]:
    def run(golden: Path, device: str, conv: str) -> Outputs:
        from engine.models.sonata import (
            SonataSegmentor,
            concat_levels,
            inject_pointcept_lora,
            load_sonata_checkpoint,
        )

        root = golden / "sonata"
        cfg = json.loads((root / "config.json").read_text())
        notes = cfg.pop("notes")
        segmentor = notes["segmentor"]
        model = SonataSegmentor(dict(cfg, enable_flash=enable_flash, sparse_conv_backend=conv, attention_backend="sdpa"),
                                segmentor["num_classes"])
        if lora:
            spec = segmentor["lora"]
            inject_pointcept_lora(model, r=spec["r"], lora_alpha=spec["lora_alpha"], lora_dropout=spec["lora_dropout"])
            report = load_sonata_checkpoint(model, root / "lora" / "weights.safetensors")
            if not report.ok:
                raise RuntimeError(f"the LoRA golden weights did not load: {report}")
            io = load_file(root / "lora" / "io.safetensors")
        else:
            model.load_state_dict(load_file(root / "weights.safetensors"), strict=True)
            io = load_file(root / "io.safetensors")
        inputs = load_file(root / "io.safetensors")
        model.eval().to(device)
        with torch.no_grad():
            point = model.backbone(_to(inputs, ("coord", "grid_coord", "feat", "offset"), device))
            logits = model.seg_head(concat_levels(point))
        suffix = "_flash_semantics" if enable_flash else ""
        return {"seg_logits": (logits, io["seg_logits" + suffix]),
                "enc_out_feat": (point["feat"], io["enc_out_feat" + suffix])}

    return run


# ------------------------------------------------------------------------------ TripoSG / MIDI DiT, VAE
def _dit(name: str, multi_instance: bool = True) -> Callable[[Path, str, str], Outputs]:
    def run(golden: Path, device: str, conv: str) -> Outputs:
        from engine.models.dit import TripoSGDiTModel

        root = golden / "dit"
        cfg = json.loads((root / f"{name}.config.json").read_text())
        io = load_file(root / f"{name}.io.safetensors")
        model = TripoSGDiTModel(**cfg["constructor_kwargs"])
        model.load_state_dict(load_file(root / f"{name}.weights.safetensors"), strict=True)
        call: dict[str, Any] = _to(io, ("hidden_states", "timestep", "encoder_hidden_states"), device)
        expected = io["output"]
        if name == "midi_dit":
            call["encoder_hidden_states_2"] = io["encoder_hidden_states_2"].to(device)
            call["attention_kwargs"] = {"num_instances": io["num_instances"]}
            model.set_multi_instance_attention(cfg["attention_processors"]["multi_instance_blocks"]
                                               if multi_instance else [])
            expected = io["output"] if multi_instance else io["output_without_mi"]
        model.eval().to(device)
        with torch.no_grad():
            out = model(**call, return_dict=False)[0]
        return {"output": (out, expected)}

    return run


def _vae(direction: str) -> Callable[[Path, str, str], Outputs]:
    def run(golden: Path, device: str, conv: str) -> Outputs:
        from engine.models.dit.vae import TripoSGVAEModel

        root = golden / "dit"
        cfg = json.loads((root / f"vae_{direction}.config.json").read_text())
        vae = TripoSGVAEModel(**cfg["constructor_kwargs"])
        # vae_encode shares vae_decode's weights (tests/golden/dit/README.md).
        vae.load_state_dict(load_file(root / "vae_decode.weights.safetensors"), strict=True)
        vae.eval().to(device)
        io = load_file(root / f"vae_{direction}.io.safetensors")
        with torch.no_grad():
            if direction == "decode":
                sdf = vae.decode(io["latents"].to(device), sampled_points=io["queries"].to(device)).sample
                return {"sdf": (sdf, io["sdf"])}
            dist = vae.encode(io["surface"].to(device), num_tokens=16,
                              query_indices=io["query_indices"].to(device)).latent_dist
        return {"mean": (dist.mean, io["mean"]), "logvar": (dist.logvar, io["logvar"])}

    return run


PTV3_ATOL = 1e-4
DIT_TOL = 2e-5
CASES = (
    GoldenCase("PTv3 m1 (SceneSplat), non-flash semantics", _ptv3(False), PTV3_ATOL, 0.0, sparse_conv=True),
    GoldenCase("PTv3 m1 (SceneSplat), flash semantics", _ptv3(True), PTV3_ATOL, 0.0, sparse_conv=True),
    GoldenCase("PT-v3m2 (Sonata), non-flash semantics", _sonata(False, False), PTV3_ATOL, 0.0, sparse_conv=True),
    GoldenCase("PT-v3m2 (Sonata), flash semantics", _sonata(True, False), PTV3_ATOL, 0.0, sparse_conv=True),
    GoldenCase("PT-v3m2 (Sonata) with Pointcept LoRA", _sonata(False, True), PTV3_ATOL, 0.0, sparse_conv=True),
    GoldenCase("TripoSG DiT", _dit("triposg_dit"), DIT_TOL, DIT_TOL),
    GoldenCase("MIDI DiT, multi-instance", _dit("midi_dit"), DIT_TOL, DIT_TOL),
    GoldenCase("MIDI DiT, no multi-instance", _dit("midi_dit", multi_instance=False), DIT_TOL, DIT_TOL),
    GoldenCase("TripoSG VAE decode", _vae("decode"), DIT_TOL, DIT_TOL),
    GoldenCase("TripoSG VAE encode", _vae("encode"), DIT_TOL, DIT_TOL),
)
"""Every golden set under tests/golden/ (PTv3 both semantics, PT-v3m2 with and without LoRA, DiT, VAE)."""
