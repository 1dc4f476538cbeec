"""Checks PointTransformerV3M2 and SonataSegmentor against Pointcept's PT-v3m2 golden vectors (set A).

Every float tensor within 1e-4, every integer tensor exact, both attention semantics, with and
without PEFT LoRA on qkv, and the CheckpointSaver file of a DefaultLORASegmentorV2 run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.models.sonata import (
    SonataSegmentor,
    concat_levels,
    inject_pointcept_lora,
    load_sonata_checkpoint,
    pointcept_state_dict,
)

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "sonata"
TOL = 1e-4
INPUTS = ("coord", "grid_coord", "feat", "offset")


def _backends() -> list[tuple[str, str, str]]:
    """(sparse_conv_backend, attention_backend, device) combinations this machine can run."""
    combos = [("torch", "sdpa", "cpu")]
    if torch.cuda.is_available():
        combos.append(("torch", "sdpa", "cuda"))
        if importlib.util.find_spec("spconv") is not None:
            combos.append(("spconv", "sdpa", "cuda"))
    return combos


@pytest.fixture(scope="module")
def golden() -> dict:
    sums = dict(line.split()[::-1] for line in (GOLDEN / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest() == digest, name
    cfg = json.loads((GOLDEN / "config.json").read_text())
    notes = cfg.pop("notes")
    return dict(cfg=cfg, notes=notes, weights=load_file(GOLDEN / "weights.safetensors"),
                io=load_file(GOLDEN / "io.safetensors"),
                lora_weights=load_file(GOLDEN / "lora" / "weights.safetensors"),
                lora_io=load_file(GOLDEN / "lora" / "io.safetensors"),
                meta=json.loads((GOLDEN / "lora" / "checkpoint_meta.json").read_text()))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().double() - b.double()).abs().max().item()


def _segmentor(golden: dict, enable_flash: bool, combo=("torch", "sdpa", "cpu"), **overrides) -> SonataSegmentor:
    conv, attn, _ = combo
    cfg = {**golden["cfg"], "enable_flash": enable_flash, **overrides}
    return SonataSegmentor(dict(cfg, sparse_conv_backend=conv, attention_backend=attn),
                           golden["notes"]["segmentor"]["num_classes"])


def _run(model: SonataSegmentor, io: dict, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Runs the segmentor and records every tensor io.safetensors names, via forward hooks."""
    out: dict[str, torch.Tensor] = {}
    backbone = model.backbone
    hooks = [backbone.embedding.register_forward_hook(lambda m, a, p: out.__setitem__("stem_feat", p["feat"]))]

    def level_hook(name: str, level: int):
        def hook(module, args, point):
            out[name] = point["feat"]
            if name.endswith("_down_feat"):
                out[f"enc{level}_grid_coord"], out[f"enc{level}_batch"] = point["grid_coord"], point["batch"]
                out[f"serialized_code_l{level}"] = point["serialized_code"]
                out[f"serialized_order_l{level}"] = point["serialized_order"]
                out[f"depth_l{level}"] = torch.tensor(point["serialized_depth"])
        return hook

    def level0_hook(module, args):
        point = args[0]
        out["serialized_code_l0"], out["serialized_order_l0"] = point["serialized_code"], point["serialized_order"]
        out["depth_l0"] = torch.tensor(point["serialized_depth"])

    hooks.append(backbone.enc.enc0.register_forward_pre_hook(level0_hook))
    for s, stage in enumerate(backbone.enc.children()):
        hooks.append(stage.register_forward_hook(level_hook(f"enc{s}_feat", s)))
        for name, child in stage.named_children():
            tag = "down_feat" if name == "down" else f"{name}_feat"
            hooks.append(child.register_forward_hook(level_hook(f"enc{s}_{tag}", s)))
    model.eval().to(device)
    with torch.no_grad():
        point = backbone({k: io[k].to(device) for k in INPUTS})
        out["concat_feat"] = concat_levels(point)
        out["seg_logits"] = model.seg_head(out["concat_feat"])
    for hook in hooks:
        hook.remove()
    out.update(enc_out_feat=point["feat"], enc_out_grid_coord=point["grid_coord"], enc_out_batch=point["batch"])
    out["serialized_depth"] = torch.stack([out.pop(f"depth_l{s}") for s in range(len(model.backbone.enc_channels))])
    return {k: v.cpu() for k, v in out.items()}


def _compare(got: dict, expected: dict, names: list[str]) -> dict[str, float]:
    """Max |diff| per float tensor; asserts integer tensors are exactly equal."""
    diffs = {}
    for name in names:
        ref = expected[name]
        assert tuple(got[name].shape) == tuple(ref.shape), name
        if ref.dtype.is_floating_point:
            diffs[name] = _max_diff(got[name], ref)
        else:
            assert torch.equal(got[name].to(ref.dtype), ref), name
    return diffs


def test_golden_state_dict_layout_matches(golden):
    model = _segmentor(golden, False)
    own = model.state_dict()
    assert list(own) == golden["notes"]["weights"]["key_order"]
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in golden["weights"].items()}
    assert sum(v.numel() for v in own.values()) == golden["notes"]["weights"]["num_parameters"]
    result = model.load_state_dict(golden["weights"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("combo", _backends(), ids=lambda c: "-".join(c))
def test_golden_outputs_nonflash(golden, combo):
    model = _segmentor(golden, False, combo)
    model.load_state_dict(golden["weights"], strict=True)
    got = _run(model, golden["io"], combo[2])
    names = [k for k in golden["io"] if k not in INPUTS and not k.endswith("_flash_semantics")]
    assert len(names) == 28
    diffs = _compare(got, golden["io"], names)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, (worst, diffs[worst])


@pytest.mark.parametrize("combo", _backends(), ids=lambda c: "-".join(c))
def test_golden_outputs_flash_semantics(golden, combo):
    model = _segmentor(golden, True, combo)
    model.load_state_dict(golden["weights"], strict=True)
    got = _run(model, golden["io"], combo[2])
    io = golden["io"]
    assert _max_diff(got["seg_logits"], io["seg_logits_flash_semantics"]) <= TOL
    assert _max_diff(got["enc_out_feat"], io["enc_out_feat_flash_semantics"]) <= TOL


@pytest.mark.parametrize("enable_flash", [False, True], ids=["nonflash", "flash"])
def test_golden_lora_outputs(golden, enable_flash):
    lora = golden["notes"]["segmentor"]["lora"]
    model = _segmentor(golden, enable_flash)
    inject_pointcept_lora(model, r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora["lora_dropout"])
    assert list(model.lora3d_targets["default"]["modules"]) == [
        m.replace("enc.base_model.model.", "enc.") for m in lora["modules"]]
    report = load_sonata_checkpoint(model, GOLDEN / "lora" / "weights.safetensors")
    assert report.layout == "lora_segmentor" and report.ok and report.lora_rank == lora["r"]
    assert not report.skipped and not report.kept_init and len(report.loaded) == 134
    got = _run(model, golden["io"])
    io = golden["lora_io"]
    if enable_flash:
        pairs = {"seg_logits": "seg_logits_flash_semantics", "enc_out_feat": "enc_out_feat_flash_semantics"}
        diffs = {ref: _max_diff(got[name], io[ref]) for name, ref in pairs.items()}
    else:
        names = [k for k in io if not k.endswith("_flash_semantics")]
        diffs = _compare(got, io, names)
    assert max(diffs.values()) <= TOL, diffs
    # LoRA really moves the result: the plain golden logits are far away.
    assert _max_diff(got["seg_logits"], golden["io"]["seg_logits"]) > 1.0


def test_golden_lora_weights_export_bitwise(golden):
    lora = golden["notes"]["segmentor"]["lora"]
    model = _segmentor(golden, False)
    inject_pointcept_lora(model, r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=0.0)
    load_sonata_checkpoint(model, GOLDEN / "lora" / "weights.safetensors")
    exported = pointcept_state_dict(model)
    assert list(exported) == golden["meta"]["state_dict_key_order"]
    assert all(torch.equal(exported[k], v) for k, v in golden["lora_weights"].items())
    lora_numel = sum(v.numel() for k, v in exported.items() if ".lora_" in k)
    assert lora_numel == golden["notes"]["weights"]["num_lora_parameters"]


@pytest.mark.parametrize("ddp", [False, True], ids=["single", "ddp"])
def test_golden_checkpoint_saver_file_loads(golden, tmp_path, ddp):
    """The DefaultLORASegmentorV2 CheckpointSaver file, rebuilt from checkpoint_meta.json, loads safely."""
    meta = golden["meta"]
    prefix = "module." if ddp else ""
    state = {prefix + k: golden["lora_weights"][k] for k in meta["state_dict_key_order"]}
    path = tmp_path / "model_last.pth"
    torch.save({"epoch": meta["epoch"], "state_dict": state, "optimizer": meta["optimizer"],
                "scheduler": meta["scheduler"], "scaler": None, "best_metric_value": -math.inf}, path)
    model = _segmentor(golden, False)
    inject_pointcept_lora(model, r=4, lora_alpha=8, lora_dropout=0.0)
    report = load_sonata_checkpoint(model, path)
    assert report.ok and report.layout == "lora_segmentor"
    got = _run(model, golden["io"])
    assert _max_diff(got["seg_logits"], golden["lora_io"]["seg_logits"]) <= TOL


@pytest.mark.parametrize(
    ("overrides", "what"),
    [({"order": ("z", "z", "z", "z")}, "every block reads order 0"),
     ({"qk_scale": 16 ** -0.5}, "another attention scale")],
)
def test_golden_detects_a_semantic_change(golden, overrides, what):
    model = _segmentor(golden, False, **overrides)
    model.load_state_dict(golden["weights"], strict=True)
    got = _run(model, golden["io"])
    assert _max_diff(got["seg_logits"], golden["io"]["seg_logits"]) > 100 * TOL, what
