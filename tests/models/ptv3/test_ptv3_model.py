"""Tests the PTv3 backbone's construction, presets, determinism, training behaviour and input handling."""

from __future__ import annotations

import pytest
import torch

from engine.errors import DataError, ProfileError
from engine.models.ptv3 import POINTCEPT_DEFAULT_CONFIG, SCENESPLAT_CONFIG, PointTransformerV3
from engine.models.ptv3.point import build_point

TINY = dict(in_channels=5, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2),
            enc_depths=(1, 2, 2), enc_channels=(8, 16, 16), enc_num_head=(1, 2, 2), enc_patch_size=(16, 16, 16),
            dec_depths=(1, 1), dec_channels=(8, 16), dec_num_head=(1, 2), dec_patch_size=(16, 16),
            mlp_ratio=2, drop_path=0.0)


def _data(n: int = 120, seed: int = 0, scenes: int = 2) -> dict:
    gen = torch.Generator().manual_seed(seed)
    grids = []
    for _ in range(scenes):
        cells = torch.randperm(16**3, generator=gen)[:n]
        grids.append(torch.stack([cells // 256, (cells // 16) % 16, cells % 16], 1))
    grid = torch.cat(grids)
    return dict(coord=grid.float() * 0.02, grid_coord=grid, feat=torch.randn(len(grid), 5, generator=gen),
                offset=torch.arange(1, scenes + 1) * n)


def _meta_model(cfg: dict) -> PointTransformerV3:
    with torch.device("meta"):
        return PointTransformerV3(**cfg)


@pytest.mark.parametrize(
    ("cfg", "num_keys", "num_params"),
    [(SCENESPLAT_CONFIG, 393, 91_712_800), (POINTCEPT_DEFAULT_CONFIG, 486, 46_166_272)],
    ids=["scenesplat", "pointcept"],
)
def test_presets_match_the_original_sizes(cfg, num_keys, num_params):
    model = _meta_model(cfg)
    assert len(model.state_dict()) == num_keys
    assert sum(p.numel() for p in model.parameters()) == num_params


def test_scenesplat_key_shapes():
    sd = _meta_model(SCENESPLAT_CONFIG).state_dict()
    assert sd["embedding.stem.conv.weight"].shape == (32, 5, 5, 5, 11)
    assert sd["dec.dec0.up.proj.0.weight"].shape == (768, 512)
    assert sd["dec.dec0.up.proj_skip.0.weight"].shape == (768, 32)
    assert sd["dec.dec0.block0.cpe.0.weight"].shape == (768, 3, 3, 3, 768)
    assert sd["dec.dec0.block0.attn.qkv.weight"].shape == (2304, 768)
    assert sd["dec.dec0.block0.mlp.0.fc1.weight"].shape == (3072, 768)
    assert sd["enc.enc3.down.norm.0.running_var"].shape == (256,)
    assert [k for k in sd if k.startswith("dec.")][0].startswith("dec.dec2.")


def test_lora_targets_are_plain_linear_layers():
    model = PointTransformerV3(**TINY)
    for suffix in ("attn.qkv", "attn.proj", "mlp.0.fc1", "mlp.0.fc2"):
        layer = model.get_submodule(f"enc.enc1.block1.{suffix}")
        assert type(layer) is torch.nn.Linear


def test_eval_is_deterministic_with_shuffle_orders():
    model = PointTransformerV3(**TINY, shuffle_orders=True).eval()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(_data()).feat
        torch.manual_seed(2)
        b = model(_data()).feat
    assert torch.equal(a, b)


def _orders_seen(model: PointTransformerV3) -> set:
    """First code of every order row at level 0 and after the first pooling, over a few seeds."""
    seen = set()
    pool = model.enc.enc1.down
    for seed in range(6):
        torch.manual_seed(seed)
        point = model.serialize(build_point(_data()))
        point["feat"] = torch.zeros(240, 8)
        pooled = pool(point)
        seen.add((tuple(point.serialized_code[:, 0].tolist()), tuple(pooled.serialized_code[:, 0].tolist())))
    return seen


def test_training_shuffles_orders_and_eval_does_not():
    model = PointTransformerV3(**TINY, shuffle_orders=True)
    assert len(_orders_seen(model.train())) > 1
    assert len(_orders_seen(model.eval())) == 1
    assert len(_orders_seen(PointTransformerV3(**TINY, shuffle_orders=False).train())) == 1


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = PointTransformerV3(**{**TINY, "drop_path": 0.2}, shuffle_orders=False).train()

    def grads():
        model.zero_grad()
        torch.manual_seed(3)
        out = model(_data())
        out.feat.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    ckpt = grads()
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_output_is_per_input_point_in_input_order():
    model = PointTransformerV3(**TINY).eval()
    data = _data()
    perm = torch.randperm(120)
    shuffled = dict(data)
    for key in ("coord", "grid_coord", "feat"):
        shuffled[key] = torch.cat([data[key][:120][perm], data[key][120:]])
    with torch.no_grad():
        a = model(data).feat
        b = model(shuffled).feat
    assert a.shape == (240, 8)
    torch.testing.assert_close(b[:120], a[:120][perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("flag", ["cls_mode", "enc_mode"])
def test_encoder_only_mode_builds_no_decoder(flag):
    model = PointTransformerV3(**TINY, **{flag: True}).eval()
    assert not hasattr(model, "dec") and model.out_channels == 16
    with torch.no_grad():
        out = model(_data())
    assert out.feat.shape[1] == 16 and out.feat.shape[0] < 240


def test_grid_size_and_batch_inputs():
    model = PointTransformerV3(**TINY).eval()
    data = _data()
    with torch.no_grad():
        ref = model(dict(data)).feat
        by_batch = dict(data)
        by_batch["batch"] = torch.arange(2).repeat_interleave(120)
        del by_batch["offset"]
        torch.testing.assert_close(model(by_batch).feat, ref)
        by_size = dict(data)
        del by_size["grid_coord"]
        by_size["coord"] = data["grid_coord"].float() + 0.5
        by_size["grid_size"] = 1.0
        torch.testing.assert_close(model(by_size).feat, ref)


def test_bad_inputs_are_data_errors():
    model = PointTransformerV3(**TINY)
    data = _data()
    with pytest.raises(DataError, match="input.offset: last entry must equal the number of points 240"):
        model({**data, "offset": torch.tensor([100, 200])})
    no_grid = {k: v for k, v in data.items() if k != "grid_coord"}
    with pytest.raises(DataError, match="input.grid_coord: missing"):
        model(no_grid)
    with pytest.raises(DataError, match=r"input.offset: every scene needs at least one point, got counts \[120, 0, 120\]"):
        model({**data, "offset": torch.tensor([120, 120, 240])})
    with pytest.raises(DataError, match="input.grid_coord: voxel coordinates must be non-negative, got a minimum of -1"):
        model({**data, "grid_coord": data["grid_coord"] - 1})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pdnorm_bn": True}, "pdnorm_bn/pdnorm_ln: PDNorm is not supported"),
        ({"order": ("z", "peano")}, "order: unknown serialization order, got 'peano'"),
        ({"pooling": "sum"}, "pooling: unknown reduction, got 'sum'"),
        ({"serialization_depth_rule": "max"}, "serialization_depth_rule: unknown rule"),
        ({"enable_flash": True, "enable_rpe": True}, "enable_flash: flash attention cannot use enable_rpe"),
        ({"stride": (2,)}, r"stride: needs 2 entries \(one per stage\), got \[2\]"),
    ],
)
def test_invalid_configs_raise_profile_errors(kwargs, message):
    with pytest.raises(ProfileError, match=message):
        PointTransformerV3(**{**TINY, **kwargs})


def test_rpe_and_upcast_run_without_flash():
    model = PointTransformerV3(**TINY, enable_flash=False, enable_rpe=True, upcast_attention=True).eval()
    assert "enc.enc0.block0.attn.rpe.rpe_table" in model.state_dict()
    assert model.state_dict()["enc.enc0.block0.attn.rpe.rpe_table"].shape == (3 * (2 * 7 + 1), 1)
    with torch.no_grad():
        out = model(_data()).feat
    assert torch.isfinite(out).all()


def test_mismatched_decoder_patch_size_warns():
    with pytest.warns(UserWarning, match="dec_patch_size: differs from enc_patch_size at stages \\[0\\]"):
        PointTransformerV3(**{**TINY, "dec_patch_size": (8, 16)})


def test_cpu_autocast_bf16_forward_and_backward():
    model = PointTransformerV3(**TINY).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_data())
    assert out.feat.dtype == torch.bfloat16
    out.feat.float().square().mean().backward()
    grad = model.embedding.stem.conv.weight.grad
    assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_peft_lora_on_attention_and_mlp_trains_only_adapters():
    peft = pytest.importorskip("peft")
    model = PointTransformerV3(**TINY)
    # NOTE: a bare "proj" would also match pooling `down.proj` and unpooling `up.proj` (Pointcept names)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["attn.qkv", "attn.proj", "mlp.0.fc1", "mlp.0.fc2"])
    lora = peft.get_peft_model(model, config)
    wrapped = [n for n, m in lora.named_modules() if n.endswith("attn.qkv") and hasattr(m, "lora_A")]
    assert len(wrapped) == 1 + 2 + 2 + 1 + 1  # every block of TINY
    lora.train()
    lora.base_model.model(_data()).feat.square().mean().backward()
    with_grad = {n for n, p in lora.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)


@pytest.mark.slow
def test_scenesplat_preset_runs_on_cpu():
    torch.manual_seed(0)
    model = PointTransformerV3(**SCENESPLAT_CONFIG).eval()
    gen = torch.Generator().manual_seed(0)
    cells = torch.randperm(40**3, generator=gen)[:1500]
    grid = torch.stack([cells // 1600, (cells // 40) % 40, cells % 40], 1)
    data = dict(coord=grid.float() * 0.02, grid_coord=grid, feat=torch.randn(1500, 11, generator=gen),
                offset=torch.tensor([900, 1500]))
    with torch.no_grad():
        out = model(data)
    assert out.feat.shape == (1500, 768) and torch.isfinite(out.feat).all()
