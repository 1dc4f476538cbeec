"""Behaviour of PointTransformerV3M2 that the golden set does not exercise: decoder, layer scale, mask token,
freezing, order shuffling, per-level depth, gradient checkpointing, small scenes, bad input."""

from __future__ import annotations

import types

import pytest
import torch

from engine.errors import DataError, ProfileError
from engine.models.ptv3 import attention as ptv3_attention
from engine.models.ptv3.point import build_point
from engine.models.sonata import PointTransformerV3M2, SonataSegmentor, concat_levels

TINY = dict(
    in_channels=6, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2),
    enc_depths=(1, 1, 2), enc_channels=(8, 16, 24), enc_num_head=(2, 2, 4), enc_patch_size=(16, 16, 16),
    dec_depths=(1, 1), dec_channels=(8, 16), dec_num_head=(2, 2), dec_patch_size=(16, 16),
    mlp_ratio=2, drop_path=0.0, enable_flash=False, shuffle_orders=False,
    sparse_conv_backend="torch", attention_backend="sdpa",
)


def _data(counts=(150, 110), extent=24, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    grids = []
    for n in counts:
        cells = torch.randperm(extent**3, generator=gen)[:n]
        grids.append(torch.stack([cells // extent**2, (cells // extent) % extent, cells % extent], 1))
    grid = torch.cat(grids)
    return dict(coord=grid.float() * 0.02, grid_coord=grid, feat=torch.randn(grid.shape[0], 6, generator=gen),
                offset=torch.tensor(counts).cumsum(0))


def _model(**overrides) -> PointTransformerV3M2:
    torch.manual_seed(0)
    return PointTransformerV3M2(**{**TINY, **overrides}).eval()


def test_decoder_output_is_level0_in_input_order_and_keys_follow_pointcept():
    model = _model()
    keys = set(model.state_dict())
    assert {"dec.dec1.up.proj.0.weight", "dec.dec1.up.proj.1.weight", "dec.dec1.up.proj_skip.1.bias",
            "dec.dec0.block0.cpe.0.weight", "enc.enc1.down.norm.0.weight"} <= keys
    assert not any("ls1" in k or "mask_token" in k or "running_mean" in k for k in keys)
    data = _data()
    with torch.no_grad():
        out = model(data)
    assert out.feat.shape == (260, 8) and "pooling_parent" not in out
    assert torch.equal(out.grid_coord, data["grid_coord"])
    assert torch.equal(concat_levels(out), out.feat)
    assert SonataSegmentor(model, 5).seg_head.in_features == 8


def test_decoder_cpe_reads_the_fused_features():
    """Unlike PT-v3m1's decoder, the first decoder block convolves skip + upsampled, not the skip branch."""
    model = _model(traceable=True)
    seen = {}
    model.dec.dec0.up.register_forward_hook(lambda m, a, p: seen.__setitem__("up", p["feat"].clone()))
    model.dec.dec0.block0.cpe[0].register_forward_hook(lambda m, a, o: seen.__setitem__("conv_in", a[0]))
    with torch.no_grad():
        out = model(_data())
    assert torch.equal(seen["conv_in"], seen["up"])
    assert out["unpooling_parent"]["feat"].shape[1] == 16  # traceable keeps the coarse level


def test_layer_scale_keys_and_zero_scale_removes_attention_and_mlp():
    model = _model(layer_scale=1e-5, enc_mode=True)
    block = model.enc.enc0.block0
    assert torch.equal(model.state_dict()["enc.enc0.block0.ls1.0.gamma"], torch.full((8,), 1e-5))
    assert "enc.enc0.block0.ls2.0.gamma" in model.state_dict()
    with torch.no_grad():
        block.ls1[0].gamma.zero_()
        block.ls2[0].gamma.zero_()
    captured = {}
    block.register_forward_hook(lambda m, a, p: captured.__setitem__("out", p["feat"].clone()))
    with torch.no_grad():
        model(_data())
        # With both scales zero the block is x + CPE(x): recompute the CPE on the same level.
        point = model.embedding(build_point(_data()))
        expected = point["feat"] + block.cpe[2](block.cpe[1](block.cpe[0](point["feat"], point)))
    assert torch.allclose(captured["out"], expected, atol=1e-6)


def test_mask_token_replaces_masked_points_and_is_required_for_masks():
    model = _model(mask_token=True, enc_mode=True)
    assert model.state_dict()["embedding.mask_token"].shape == (1, 8)
    with torch.no_grad():
        model.embedding.mask_token.normal_()
    data = _data()
    mask = torch.zeros(260, dtype=torch.bool)
    mask[::3] = True
    seen = {}
    model.embedding.register_forward_hook(lambda m, a, p: seen.__setitem__("feat", p["feat"].clone()))
    with torch.no_grad():
        model({**data, "mask": mask})
    assert torch.equal(seen["feat"][mask], model.embedding.mask_token.expand(int(mask.sum()), 8))
    assert not torch.equal(seen["feat"][~mask][0], model.embedding.mask_token[0])
    with pytest.raises(DataError, match="mask_token=True"):
        _model(enc_mode=True)({**data, "mask": mask})


def test_freeze_encoder_freezes_embedding_and_encoder_only():
    model = _model(freeze_encoder=True)
    for name, param in model.named_parameters():
        assert param.requires_grad == name.startswith("dec."), name


def test_init_follows_pointcept():
    model = _model(enc_mode=True, enc_channels=(64, 64, 64), enc_num_head=(4, 4, 4))
    qkv = model.enc.enc0.block0.attn.qkv
    # trunc_normal_(std=0.02) truncates at +-2 absolute (timm/torch defaults): a plain N(0, 0.02) in practice.
    assert abs(qkv.weight.std().item() - 0.02) < 0.001
    assert not qkv.bias.any() and not model.enc.enc0.block0.cpe[0].bias.any()
    assert torch.equal(model.enc.enc1.down.norm[0].weight, torch.ones(64))


def test_every_level_uses_depth_bit_length_of_max_plus_one():
    data = _data(counts=(150, 110), extent=16)  # grid max 15 = 2^4 - 1: depth 5, not 4
    depths = []
    model = _model(enc_mode=True)
    model.enc.enc0.register_forward_pre_hook(lambda m, a: depths.append((a[0]["serialized_depth"], a[0].grid_coord)))
    for s in (1, 2):
        model.enc.get_submodule(f"enc{s}.down").register_forward_hook(
            lambda m, a, p: depths.append((p["serialized_depth"], p.grid_coord)))
    with torch.no_grad():
        model(data)
    assert [d for d, _ in depths] == [(int(g.max()) + 1).bit_length() for _, g in depths] == [5, 4, 3]


def test_orders_shuffle_only_in_training_with_shuffle_orders():
    model = _model(shuffle_orders=True, enc_mode=True)
    data = _data()
    with torch.no_grad():
        a, b = model(data).feat, model(data).feat
    assert torch.equal(a, b)
    codes = []
    model.enc.enc0.register_forward_pre_hook(lambda m, a: codes.append(a[0]["serialized_code"]))
    model.train()
    torch.manual_seed(3)
    with torch.no_grad():
        for _ in range(4):
            model(data)
    reference = _model(enc_mode=True)
    reference.enc.enc0.register_forward_pre_hook(lambda m, a: codes.append(a[0]["serialized_code"]))
    with torch.no_grad():
        reference(data)
    plain = codes.pop()
    assert all(sorted(c.tolist()) == sorted(plain.tolist()) for c in codes)
    assert any(not torch.equal(c, plain) for c in codes)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    data = _data()
    grads = []
    for enabled in (False, True):
        model = _model(drop_path=0.0).train()
        if enabled:
            model.gradient_checkpointing_enable()
        assert model.is_gradient_checkpointing == enabled
        loss = model(data).feat.square().mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0][1], grads[1][1]))


def test_small_scene_nonflash_shrinks_patches_flash_keeps_them():
    data = _data(counts=(150, 12))  # scene 2 is below the patch size of 16
    flash = _model(enable_flash=True, enc_mode=True)
    nonflash = _model(enc_mode=True)
    with torch.no_grad():
        a, b = flash(data).feat, nonflash(data).feat
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert (a - b).abs().max() > 1e-3


def test_bad_input_and_config_raise_clear_errors():
    with pytest.raises(DataError, match="in_channels=4"):
        _model(enc_mode=True)({**_data(), "feat": torch.zeros(260, 4)})
    with pytest.raises(ProfileError, match="enc_channels"):
        _model(enc_channels=(8, 16))
    with pytest.raises(ProfileError, match="order"):
        _model(order=("z", "peano"))
    with pytest.raises(ProfileError, match="backbone_out_channels"):
        SonataSegmentor(dict(TINY, enc_mode=True), 4, backbone_out_channels=24)


def test_flash_backend_casts_to_the_requested_dtype(monkeypatch):
    """PT-v3m2 asks the shared flash backend for bf16; PT-v3m1 keeps fp16 (the default)."""
    calls = []

    def varlen(qkv, cu_seqlens, max_seqlen, dropout_p, softmax_scale):
        calls.append(qkv.dtype)
        return qkv[:, 0]

    monkeypatch.setattr(ptv3_attention, "_import_flash_attn",
                        lambda: types.SimpleNamespace(flash_attn_varlen_qkvpacked_func=varlen))
    assert ptv3_attention.build_attention_backend("auto", True).dtype == torch.float16
    model = PointTransformerV3M2(**{**TINY, "enable_flash": True, "attention_backend": "auto", "enc_mode": True})
    assert model.attention_backend.name == "flash" and model.attention_backend.dtype == torch.bfloat16
    if torch.cuda.is_available():
        plan = ptv3_attention.build_patch_plan([32], 16, torch.device("cuda"))
        model.attention_backend.attend(torch.randn(32, 24, device="cuda"), plan, 2, 0.5, 0.0)
        assert calls == [torch.bfloat16]


def test_frozen_backbone_trains_the_head_only_without_storing_backbone_graphs():
    data = _data()
    model = SonataSegmentor(dict(TINY, enc_mode=True), 4, freeze_backbone=True).train()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["seg_head.weight", "seg_head.bias"]
    feat = model.features(data)
    assert feat.shape == (260, 8 + 16 + 24) and not feat.requires_grad
    model(data).square().mean().backward()
    assert model.seg_head.weight.grad is not None
    trainable = SonataSegmentor(dict(TINY, enc_mode=True), 4).train()
    assert trainable.features(data).requires_grad
