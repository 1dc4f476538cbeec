"""Golden-vector checks of TripoSGDiTModel against the original TripoSG and MIDI-3D classes (tests/golden/dit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.models.dit import TripoSGDiTModel

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "dit"
TOL = {"rtol": 2e-5, "atol": 2e-5}


def _case(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    cfg = json.loads((GOLDEN / f"{name}.config.json").read_text())
    return cfg, load_file(GOLDEN / f"{name}.weights.safetensors"), load_file(GOLDEN / f"{name}.io.safetensors")


def _run_with_debug(
    model: TripoSGDiTModel, call_kwargs: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    captured: dict[str, torch.Tensor] = {}

    def keep(key: str):
        def hook(_module, _inputs, output):
            captured[key] = output.detach().clone()

        return hook

    handles = [model.time_proj.register_forward_hook(keep("debug.temb")),
               model.proj_in.register_forward_hook(keep("debug.proj_in"))]
    handles += [b.register_forward_hook(keep(f"debug.block_{i:02d}")) for i, b in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            out = model(**call_kwargs, return_dict=False)[0]
    finally:
        for h in handles:
            h.remove()
    return out, captured


def test_triposg_dit_matches_golden():
    cfg, weights, io = _case("triposg_dit")
    model = TripoSGDiTModel(**cfg["constructor_kwargs"])
    model.load_state_dict(weights, strict=True)
    model.eval()
    assert model.blocks[0].attn2_2 is None
    out, debug = _run_with_debug(model, {
        "hidden_states": io["hidden_states"], "timestep": io["timestep"],
        "encoder_hidden_states": io["encoder_hidden_states"],
    })
    debug_keys = sorted(k for k in io if k.startswith("debug."))
    assert debug_keys == sorted(debug)
    for key in debug_keys:
        torch.testing.assert_close(debug[key], io[key], **TOL, msg=key)
    torch.testing.assert_close(out, io["output"], **TOL)


@pytest.fixture(scope="module")
def midi_model() -> tuple[TripoSGDiTModel, dict, dict[str, torch.Tensor]]:
    cfg, weights, io = _case("midi_dit")
    model = TripoSGDiTModel(**cfg["constructor_kwargs"])
    model.load_state_dict(weights, strict=True)
    return model.eval(), cfg, io


def _midi_call(io: dict[str, torch.Tensor]) -> dict:
    return {
        "hidden_states": io["hidden_states"], "timestep": io["timestep"],
        "encoder_hidden_states": io["encoder_hidden_states"],
        "encoder_hidden_states_2": io["encoder_hidden_states_2"],
        "attention_kwargs": {"num_instances": io["num_instances"]},
    }


def test_midi_dit_without_multi_instance_matches_golden(midi_model):
    model, _cfg, io = midi_model
    model.set_multi_instance_attention([])
    out, _ = _run_with_debug(model, _midi_call(io))
    torch.testing.assert_close(out, io["output_without_mi"], **TOL)


def test_midi_dit_multi_instance_matches_golden(midi_model):
    model, cfg, io = midi_model
    blocks = cfg["attention_processors"]["multi_instance_blocks"]
    model.set_multi_instance_attention(blocks)
    assert model.multi_instance_blocks == blocks
    out, debug = _run_with_debug(model, _midi_call(io))
    for key in sorted(k for k in io if k.startswith("debug.")):
        torch.testing.assert_close(debug[key], io[key], **TOL, msg=key)
    torch.testing.assert_close(out, io["output"], **TOL)
    # The case must be able to tell MI from no MI, or the check above proves nothing.
    assert (io["output"] - io["output_without_mi"]).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["triposg_dit", "midi_dit"])
def test_hub_style_folder_loads_with_from_pretrained(tmp_path, name):
    """A `transformer/` folder as on the hub: config.json (MIDI's has no `use_cross_attention_2`) + weights."""
    cfg, weights, io = _case(name)
    config = {"_class_name": "TripoSGDiTModel", "_diffusers_version": "0.30.3", **cfg["constructor_kwargs"]}
    if name == "triposg_dit":
        # TripoSG's hub config carries only these five keys.
        config = {k: config[k] for k in ("_class_name", "_diffusers_version", "cross_attention_dim",
                                         "in_channels", "num_attention_heads", "num_layers", "width")}
    config["a_key_from_a_newer_release"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(weights, str(tmp_path / "diffusion_pytorch_model.safetensors"))

    model = TripoSGDiTModel.from_pretrained(str(tmp_path)).eval()

    assert model.config.use_cross_attention_2 is (name == "midi_dit")
    call = {"hidden_states": io["hidden_states"], "timestep": io["timestep"],
            "encoder_hidden_states": io["encoder_hidden_states"]}
    if name == "midi_dit":
        call["encoder_hidden_states_2"] = io["encoder_hidden_states_2"]
    with torch.no_grad():
        out = model(**call).sample
    expected = io["output"] if name == "triposg_dit" else io["output_without_mi"]
    torch.testing.assert_close(out, expected, **TOL)
