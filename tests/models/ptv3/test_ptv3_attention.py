"""Tests serialized patch attention: padding plan, both semantics with a small scene, orders per block."""

from __future__ import annotations

import pytest
import torch

from engine.errors import HardwareError
from engine.models.ptv3 import PointTransformerV3
from engine.models.ptv3.attention import _import_flash_attn, build_attention_backend, build_patch_plan


def _scene(seed: int, n: int, extent: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    cells = torch.randperm(extent**3 - 1, generator=gen)[:n]
    cells[0] = extent**3 - 1  # every scene reaches the same maximum, so serialization depth is shared
    return torch.stack([cells // extent**2, (cells // extent) % extent, cells % extent], 1)


def _batch(grids: list[torch.Tensor], c_in: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    grid = torch.cat(grids)
    counts = torch.tensor([len(g) for g in grids])
    return dict(coord=grid.float() * 0.02, grid_coord=grid, feat=torch.randn(len(grid), c_in, generator=gen),
                offset=torch.cumsum(counts, 0))


def _small_model(enable_flash: bool, **kw) -> PointTransformerV3:
    torch.manual_seed(5)
    cfg = dict(in_channels=4, order=("z", "z-trans"), stride=(2,), enc_depths=(1, 1), enc_channels=(8, 16),
               enc_num_head=(2, 2), enc_patch_size=(16, 16), dec_depths=(1,), dec_channels=(8,),
               dec_num_head=(2,), dec_patch_size=(16,), drop_path=0.0, enable_flash=enable_flash,
               attention_backend="sdpa")
    cfg.update(kw)
    return PointTransformerV3(**cfg).eval()


def test_patch_plan_copies_tokens_from_k_positions_earlier():
    plan = build_patch_plan([10, 3], 4, torch.device("cpu"))
    # scene 0: 10 -> padded to 12; slots 10, 11 copy positions 6, 7. scene 1: 3 <= K, one sequence.
    assert plan.pad.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 10, 11, 12]
    assert plan.unpad.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14]
    assert plan.cu_seqlens.tolist() == [0, 4, 8, 12, 15]
    assert plan.full_starts.tolist() == [0, 4, 8] and plan.short_spans == ((12, 3),)


def test_patch_plan_exact_multiple_needs_no_padding():
    plan = build_patch_plan([8, 4], 4, torch.device("cpu"))
    assert plan.pad.tolist() == list(range(12)) and plan.cu_seqlens.tolist() == [0, 4, 8, 12]


def test_small_scene_flash_semantics_equal_each_scene_alone():
    big, small = _scene(1, 120), _scene(2, 10)
    model = _small_model(enable_flash=True)
    with torch.no_grad():
        both = model(_batch([big, small], 4)).feat
        data = _batch([big, small], 4)
        alone_big = model(dict(coord=data["coord"][:120], grid_coord=big, feat=data["feat"][:120],
                               offset=torch.tensor([120]))).feat
        alone_small = model(dict(coord=data["coord"][120:], grid_coord=small, feat=data["feat"][120:],
                                 offset=torch.tensor([10]))).feat
    torch.testing.assert_close(both, torch.cat([alone_big, alone_small]), atol=1e-5, rtol=1e-5)


def test_small_scene_shrinks_patch_size_for_the_whole_batch_without_flash():
    big, small = _scene(1, 120), _scene(2, 10)
    model = _small_model(enable_flash=False)
    data = _batch([big, small], 4)
    with torch.no_grad():
        out = model(dict(data))
        alone_big = model(dict(coord=data["coord"][:120], grid_coord=big, feat=data["feat"][:120],
                               offset=torch.tensor([120])))
        flash_both = _small_model(enable_flash=True)(dict(data)).feat
    assert out["_patch_plan"].patch_size == 10  # min(10 points, patch 16) for every scene
    assert alone_big["_patch_plan"].patch_size == 16
    assert (out.feat[:120] - alone_big.feat).abs().max() > 1e-3
    assert (out.feat[:120] - flash_both[:120]).abs().max() > 1e-3
    # the small scene is a single patch either way
    torch.testing.assert_close(out.feat[120:], flash_both[120:], atol=1e-5, rtol=1e-5)


def _naive_attention(attn, feat: torch.Tensor, level: dict, order_index: int, k: int) -> torch.Tensor:
    """Per-patch softmax attention written from the padding rule: a scene's last partial patch
    attends over the scene's last K tokens; every query row is answered by the patch that owns it."""
    h = attn.num_heads
    c = feat.shape[1]
    qkv = attn.qkv(feat)
    q, kk, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
    out = torch.zeros_like(feat)
    serial = level["serialized_order"][order_index]
    offsets = [0] + level["offset"].tolist()
    for s in range(len(offsets) - 1):
        seq = serial[offsets[s] : offsets[s + 1]]
        n = len(seq)
        starts = list(range(0, n, k)) if n > k else [0]
        for st in starts:
            key_rows = seq[max(0, min(st, n - k)) : max(0, min(st, n - k)) + k] if n > k else seq
            query_rows = seq[st : st + k] if n > k else seq
            qh = q[query_rows].view(-1, h, c // h).transpose(0, 1)
            kh = kk[key_rows].view(-1, h, c // h).transpose(0, 1)
            vh = v[key_rows].view(-1, h, c // h).transpose(0, 1)
            w = torch.softmax(qh @ kh.transpose(1, 2) * attn.scale, dim=-1)
            out[query_rows] = (w @ vh).transpose(0, 1).reshape(-1, c)
    return attn.proj(out)


@pytest.mark.parametrize("enable_flash", [False, True], ids=["nonflash", "flash"])
def test_block_i_uses_order_i_mod_len_with_hilbert_orders(enable_flash):
    orders = ("z", "z-trans", "hilbert", "hilbert-trans")
    model = _small_model(enable_flash=enable_flash, order=orders, enc_depths=(5, 3), dec_depths=(2,),
                         enc_patch_size=(12, 12), dec_patch_size=(12,))
    captured = []

    def hook(module, args, output):
        captured.append((module, args[0], args[1], output))

    names = {}
    for name, module in model.named_modules():
        if name.endswith(".attn"):
            names[module] = name
            module.register_forward_hook(hook)
    data = _batch([_scene(3, 150, 14), _scene(4, 90, 14)], 4)
    with torch.no_grad():
        model(data)
    assert len(captured) == 5 + 3 + 2
    for module, feat, level, output in captured:
        block = int(names[module].split(".block")[1].split(".")[0])
        expected = block % len(orders)
        assert module.order_index == expected
        k = level["_patch_plan"].patch_size
        with torch.no_grad():
            ref = _naive_attention(module, feat, level, expected, k)
            wrong = _naive_attention(module, feat, level, (expected + 1) % len(orders), k)
        torch.testing.assert_close(output, ref, atol=1e-5, rtol=1e-5, msg=names[module])
        assert (output - wrong).abs().max() > 1e-4, names[module]


def test_flash_backend_requested_without_flash_attn_fails_at_construction():
    if _import_flash_attn() is not None:
        pytest.skip("flash-attn is installed here")
    with pytest.raises(HardwareError, match="attention_backend: flash-attn was requested"):
        build_attention_backend("flash", enable_flash=True)
    assert build_attention_backend("auto", enable_flash=True).name == "sdpa"
