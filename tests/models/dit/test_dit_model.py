"""Behaviour of TripoSGDiTModel: on-disk round trip, config handling, checkpointing, LoRA, input checks."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig

from engine.errors import CheckpointError
from engine.models.dit import TripoSGDiTModel

TINY = {"num_attention_heads": 2, "width": 16, "in_channels": 4, "num_layers": 5, "cross_attention_dim": 6}


def _tiny(seed: int = 0, **overrides) -> TripoSGDiTModel:
    torch.manual_seed(seed)
    model = TripoSGDiTModel(**{**TINY, **overrides})
    # Non-trivial norm affines, so a misplaced norm cannot hide behind weight=1, bias=0.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def _inputs(batch: int = 2, tokens: int = 5, cond2: int | None = None, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {
        "hidden_states": torch.randn(batch, tokens, TINY["in_channels"], generator=g),
        "timestep": torch.rand(batch, generator=g) * 1000,
        "encoder_hidden_states": torch.randn(batch, 3, TINY["cross_attention_dim"], generator=g),
    }
    if cond2 is not None:
        out["encoder_hidden_states_2"] = torch.randn(batch, 4, cond2, generator=g)
    return out


def test_save_pretrained_round_trip(tmp_path):
    model = _tiny(cross_attention_2_dim=7).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert config["use_cross_attention_2"] is True and config["cross_attention_2_dim"] == 7

    loaded = TripoSGDiTModel.from_pretrained(tmp_path).eval()
    x = _inputs(cond2=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x).sample, model(**x).sample, rtol=0, atol=0)
    assert loaded.state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize(
    ("flag", "dim", "has_attn2_2"),
    [(None, None, False), (None, 7, True), (False, 7, False), (True, 7, True)],
)
def test_second_cross_attention_follows_config(flag, dim, has_attn2_2):
    model = _tiny(use_cross_attention_2=flag, cross_attention_2_dim=dim)
    assert (model.blocks[0].attn2_2 is not None) is has_attn2_2
    assert model.config.use_cross_attention_2 is has_attn2_2
    keys = model.state_dict().keys()
    assert ("blocks.4.attn2_2.to_k.weight" in keys) is has_attn2_2


def test_state_dict_names_match_triposg_layout():
    keys = set(_tiny().state_dict())
    # Skips only in the second half of the U (blocks > num_layers // 2).
    assert {k for k in keys if "skip_linear.weight" in k} == {"blocks.3.skip_linear.weight",
                                                              "blocks.4.skip_linear.weight"}
    for key in ("time_proj.linear_1.weight", "proj_in.bias", "blocks.0.attn1.norm_q.weight",
                "blocks.0.attn1.to_out.0.bias", "blocks.0.ff.net.0.proj.weight", "blocks.0.ff.net.2.weight",
                "norm_out.weight", "proj_out.bias"):
        assert key in keys
    assert "blocks.0.attn1.to_q.bias" not in keys


@pytest.mark.parametrize(
    ("overrides", "text"),
    [({"use_cross_attention_2": True}, "`cross_attention_2_dim`"), ({"width": 15}, "num_attention_heads")],
)
def test_bad_config_raises_checkpoint_error(overrides, text):
    with pytest.raises(CheckpointError, match=text):
        TripoSGDiTModel(**{**TINY, **overrides})


def test_missing_second_condition_and_unknown_kwargs_are_rejected():
    model = _tiny(cross_attention_2_dim=7)
    x = _inputs(cond2=7)
    with pytest.raises(ValueError, match="encoder_hidden_states_2"):
        model(**{k: v for k, v in x.items() if k != "encoder_hidden_states_2"})
    with pytest.raises(TypeError, match="num_instance"):
        model(**x, attention_kwargs={"num_instance": 2})


def test_scalar_timestep_equals_expanded_timestep():
    model = _tiny().eval()
    x = _inputs()
    with torch.no_grad():
        a = model(x["hidden_states"], 400.0, x["encoder_hidden_states"]).sample
        b = model(x["hidden_states"], torch.full((2,), 400.0), x["encoder_hidden_states"]).sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _loss_and_grads(model: TripoSGDiTModel, x: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**x).sample.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_same_loss_and_grads():
    model = _tiny(cross_attention_2_dim=7).train()
    x = _inputs(cond2=7)
    loss_plain, grads_plain = _loss_and_grads(model, x)
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    loss_ckpt, grads_ckpt = _loss_and_grads(model, x)
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert grads_ckpt.keys() == grads_plain.keys() and len(grads_plain) == len(list(model.parameters()))
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def _lora_model() -> TripoSGDiTModel:
    model = _tiny()
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)  # B starts at zero; make the adapter change the output
    return model.train()


def test_lora_grads_reach_adapters_with_frozen_base_and_checkpointing():
    model = _lora_model()
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    # 2 attentions x 4 targets x 2 matrices per block
    assert len(lora) == TINY["num_layers"] * 2 * 4 * 2 and all("lora_" in n for n in lora)
    x = _inputs()
    _, grads_plain = _loss_and_grads(model, x)
    model.enable_gradient_checkpointing()
    _, grads_ckpt = _loss_and_grads(model, x)
    assert set(grads_ckpt) == lora
    for name in lora:
        assert grads_ckpt[name].abs().sum() > 0, name
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_lora_scale_zero_gives_base_output():
    base = _tiny().eval()
    model = _lora_model().eval()
    x = _inputs()
    with torch.no_grad():
        expected = base(**x).sample
        with_lora = model(**x).sample
        scaled_off = model(**x, attention_kwargs={"scale": 0.0}).sample
        again = model(**x).sample
    assert (with_lora - expected).abs().max() > 1e-3
    torch.testing.assert_close(scaled_off, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(again, with_lora, rtol=0, atol=0)  # the scale is restored after the call


@pytest.mark.parametrize(
    ("config", "params", "keys", "processors", "lora_r16"),
    [
        ({}, 1_439_556_160, 554, 42, 10_321_920),  # TripoSG hub config (= the defaults)
        ({"cross_attention_dim": 768, "cross_attention_2_dim": 1024}, 1_681_911_616, 743, 63, 14_966_784),  # MIDI
    ],
)
def test_full_size_models_match_the_published_sizes(config, params, keys, processors, lora_r16):
    """Sizes of the real checkpoints (reference/midi.md section 1.4), built on the meta device."""
    from peft import inject_adapter_in_model

    with torch.device("meta"):
        model = TripoSGDiTModel(**config)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys
    assert len(model.attn_processors) == processors
    inject_adapter_in_model(LoraConfig(r=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), model)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == lora_r16
