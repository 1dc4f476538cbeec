"""LoRA on PT-v3m2: Pointcept's qkv-only targets, engine.lora's resolver on this backbone, meta-device counts."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from engine.errors import ProfileError
from engine.lora import inject_lora_to_ptv3
from engine.models.sonata import (
    CONCERTO_LARGE_CONFIG,
    LORA_TARGETS,
    SONATA_BASE_CONFIG,
    SONATA_BASE_DECODER_CONFIG,
    SONATA_LORA_PRESETS,
    PointTransformerV3M2,
    SonataSegmentor,
    count_lora_parameters,
    inject_lora_to_sonata,
    inject_pointcept_lora,
    lora_target_names,
    target_roles,
)

TINY = dict(
    in_channels=6, order=("z", "z-trans"), stride=(2, 2), enc_depths=(1, 1, 2), enc_channels=(8, 16, 24),
    enc_num_head=(2, 2, 4), enc_patch_size=(16, 16, 16), dec_depths=(1, 1), dec_channels=(8, 16),
    dec_num_head=(2, 2), dec_patch_size=(16, 16), mlp_ratio=2, enable_flash=False,
    sparse_conv_backend="torch", attention_backend="sdpa",
)


def _closed_form(config: dict, r: int, targets: str) -> int:
    """LoRA on a Linear(in, out) adds r * (in + out); per encoder block of width C with MLP hidden h*C:
    qkv r(C + 3C), proj r(C + C), fc1 r(C + hC), fc2 r(hC + C)."""
    h = config["mlp_ratio"]
    per_channel = {"qkv": 4, "attn": 4 + 2, "attn+mlp": 4 + 2 + 2 * (1 + h)}[targets]
    return r * per_channel * sum(d * c for d, c in zip(config["enc_depths"], config["enc_channels"]))


@pytest.mark.parametrize("targets", sorted(LORA_TARGETS))
@pytest.mark.parametrize("name, config", [("concerto-large", CONCERTO_LARGE_CONFIG),
                                          ("sonata-base", SONATA_BASE_CONFIG),
                                          ("sonata-base-decoder", SONATA_BASE_DECODER_CONFIG)])
def test_lora_counts_equal_the_closed_form(name, config, targets):
    counts = count_lora_parameters(config, r=8, targets=targets)
    assert counts["lora"] == _closed_form(config, 8, targets)
    assert counts["modules"] == 24 * len(target_roles(targets))  # 24 encoder blocks


def test_lora_counts_of_the_released_shapes():
    """Pointcept's Concerto-large LoRA (r 8, qkv): 313,344 trainable LoRA weights on a 207.7M backbone."""
    concerto = count_lora_parameters(CONCERTO_LARGE_CONFIG, r=8)
    assert concerto["lora"] == 313_344 and 207e6 < concerto["base"] < 208e6
    sonata = count_lora_parameters(SONATA_BASE_CONFIG, r=8)
    assert sonata["lora"] == 228_864 and 108e6 < sonata["base"] < 109e6


def test_pointcept_lora_targets_encoder_qkv_only_like_get_peft_model():
    model = SonataSegmentor(dict(TINY), 3)  # with a decoder: its qkv stays plain
    names = lora_target_names(model, "qkv")
    assert names == tuple(f"backbone.enc.enc{s}.block{i}.attn.qkv" for s, n in enumerate((1, 1, 2)) for i in range(n))
    inject_pointcept_lora(model)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n for n in trainable)
    assert model.backbone.enc.enc0.block0.attn.qkv.lora_dropout["default"].p == 0.1
    assert model.backbone.enc.enc0.block0.attn.qkv.scaling["default"] == 2.0

    upstream = PointTransformerV3M2(**TINY)
    upstream.enc = get_peft_model(upstream.enc, LoraConfig(r=8, lora_alpha=16, target_modules=["qkv"],
                                                           lora_dropout=0.1, bias="none"))
    expected = sum(p.numel() for n, p in upstream.named_parameters() if "lora_" in n)
    assert sum(trainable.values()) == expected == _closed_form(TINY, 8, "qkv")


def test_engine_lora_resolver_finds_the_stages_unchanged():
    model = PointTransformerV3M2(**TINY)
    attn = lora_target_names(model, "attn")
    inject_lora_to_ptv3(model, r=4, lora_alpha=4, target_modules=("attn", "mlp"))
    record = model.lora3d_targets["default"]
    assert set(attn) < set(record["modules"]) and len(record["modules"]) == 4 * 4
    assert record["stages"] == ["enc0", "enc1", "enc2"]
    grid = torch.randint(0, 8, (40, 3), generator=torch.Generator().manual_seed(0)).unique(dim=0)[:30]
    with torch.no_grad():
        out = model(dict(coord=grid * 0.1, grid_coord=grid, feat=torch.randn(30, 6), offset=torch.tensor([30])))
    assert out.feat.shape == (30, 8)


def test_unknown_target_set_is_refused():
    with pytest.raises(ProfileError, match="attn\\+mlp"):
        count_lora_parameters(SONATA_BASE_CONFIG, r=8, targets="mlp")


@pytest.mark.parametrize("preset", sorted(SONATA_LORA_PRESETS))
def test_inject_lora_to_sonata_applies_each_preset(preset):
    model = SonataSegmentor(dict(TINY, enc_mode=True), 3)
    inject_lora_to_sonata(model, preset=preset)
    values = SONATA_LORA_PRESETS[preset]
    record = model.lora3d_targets["default"]
    assert record["preset"] == preset and record["backbone"] == "PT-v3m2"
    assert (record["r"], record["lora_alpha"], record["lora_dropout"]) == (values.r, values.lora_alpha, values.lora_dropout)
    roles = target_roles({"pointcept-lora": "qkv"}.get(preset, preset))
    assert len(record["modules"]) == 4 * len(roles) and all(m.rsplit(".", 1)[1] in roles for m in record["modules"])
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert lora == _closed_form(TINY, values.r, {"pointcept-lora": "qkv"}.get(preset, preset))


def test_unknown_sonata_preset_lists_the_presets():
    with pytest.raises(ProfileError, match="not a PT-v3m2 LoRA preset, got 'standard'. Use one of \\['attn'"):
        inject_lora_to_sonata(PointTransformerV3M2(**TINY), preset="standard")
