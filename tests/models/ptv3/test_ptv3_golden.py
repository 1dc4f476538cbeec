"""Checks PointTransformerV3 against the SceneSplat PT-v3m1 golden vectors, under every available backend."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.models.ptv3 import PointTransformerV3

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "ptv3"
TOL = 1e-4


def _backends() -> list[tuple[str, str, str]]:
    """(sparse_conv_backend, attention_backend, device) combinations this machine can run."""
    combos = [("torch", "sdpa", "cpu")]
    if torch.cuda.is_available():
        combos.append(("torch", "sdpa", "cuda"))
        if importlib.util.find_spec("spconv") is not None:
            combos.append(("spconv", "sdpa", "cuda"))
    return combos


@pytest.fixture(scope="module")
def golden() -> tuple[dict, dict, dict]:
    sums = dict(line.split()[::-1] for line in (GOLDEN / "SHA256SUMS").read_text().splitlines())
    for name, digest in sums.items():
        assert hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest() == digest, name
    cfg = json.loads((GOLDEN / "config.json").read_text())
    cfg.pop("notes")
    return cfg, load_file(GOLDEN / "weights.safetensors"), load_file(GOLDEN / "io.safetensors")


def _canonical(feat: torch.Tensor, grid: torch.Tensor, batch: torch.Tensor):
    key = (((batch << 16) | grid[:, 0]) << 16 | grid[:, 1]) << 16 | grid[:, 2]
    p = torch.argsort(key)
    return feat[p], grid[p], batch[p]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().double() - b.double()).abs().max().item()


def _run(cfg: dict, weights: dict, io: dict, enable_flash: bool, combo: tuple[str, str, str]):
    conv, attn, device = combo
    model = PointTransformerV3(**{**cfg, "enable_flash": enable_flash}, sparse_conv_backend=conv,
                               attention_backend=attn)
    result = model.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval().to(device)
    data = {k: io[k].to(device) for k in ("coord", "grid_coord", "feat", "offset")}
    with torch.no_grad():
        return model(data, return_intermediates=True)


def test_golden_state_dict_layout_matches(golden):
    cfg, weights, _ = golden
    model = PointTransformerV3(**cfg)
    own = model.state_dict()
    assert list(own) == json.loads((GOLDEN / "config.json").read_text())["notes"]["weights"]["key_order"]
    assert {k: tuple(v.shape) for k, v in own.items()} == {k: tuple(v.shape) for k, v in weights.items()}


@pytest.mark.parametrize("combo", _backends(), ids=lambda c: "-".join(c))
@pytest.mark.parametrize("enable_flash", [False, True], ids=["nonflash", "flash"])
def test_golden_outputs(golden, combo, enable_flash):
    cfg, weights, io = golden
    out = _run(cfg, weights, io, enable_flash, combo)
    suffix = "_flash_semantics" if enable_flash else ""
    assert _max_diff(out.feat, io["out_feat" + suffix]) <= TOL

    inter = out.intermediates
    deepest = f"enc{len(cfg['enc_depths']) - 1}"
    feat, grid, batch = _canonical(inter[deepest].feat.cpu(), inter[deepest].grid_coord.cpu(),
                                   inter[deepest].batch.cpu())
    assert torch.equal(grid, io["enc_out_grid_coord"]) and torch.equal(batch, io["enc_out_batch"])
    assert _max_diff(feat, io["enc_out_feat" + suffix]) <= TOL

    # Intermediates: level 0 in input order, deeper levels in canonical order.
    assert _max_diff(inter["stem"].feat, io["stem_feat"]) <= TOL
    assert _max_diff(inter["enc0"].feat, io["enc0_feat"]) <= TOL
    assert _max_diff(inter["dec0"].feat, io["dec0_feat"]) <= TOL
    for name in ("enc1", "enc2", "dec1"):
        feat, grid, batch = _canonical(inter[name].feat.cpu(), inter[name].grid_coord.cpu(), inter[name].batch.cpu())
        assert torch.equal(grid, io[f"{name}_grid_coord"]) and torch.equal(batch, io[f"{name}_batch"]), name
        assert _max_diff(feat, io[f"{name}_feat"]) <= TOL, name


def test_golden_serialization_is_exact(golden):
    cfg, _, io = golden
    model = PointTransformerV3(**cfg).eval()
    with torch.no_grad():
        out = model({k: io[k] for k in ("coord", "grid_coord", "feat", "offset")})
    assert out.serialized_depth == int(io["serialized_depth"])
    assert torch.equal(out.serialized_code, io["serialized_code"])
    assert torch.equal(out.serialized_order, io["serialized_order"])


def test_golden_detects_a_semantic_change(golden):
    """Max pooling instead of SceneSplat's mean must move the output far beyond the tolerance."""
    cfg, weights, io = golden
    out = _run({**cfg, "pooling": "max"}, weights, io, False, ("torch", "sdpa", "cpu"))
    assert _max_diff(out.feat, io["out_feat"]) > 100 * TOL
