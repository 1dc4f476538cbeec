"""Adapter files: PEFT folder layout, single .safetensors, .pth reading, and refusal of wrong adapters."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, Lora3dWarning
from engine.lora import (
    base_fingerprint,
    inject_lora_to_dit,
    inject_lora_to_ptv3,
    list_adapters,
    load_lora_checkpoint,
    mark_only_lora_as_trainable,
    save_lora_checkpoint,
    set_active_adapter,
)
from engine.models.dit import TripoSGDiTModel
from tests.lora.conftest import (
    TINY_DIT,
    StandInPTv3,
    ptv3_input,
    randomise_lora,
    run_ptv3,
    standin_small,
    tiny_ptv3,
)


def _trained(base, seed: int = 0, **kwargs):
    model = inject_lora_to_ptv3(copy.deepcopy(base), **kwargs)
    randomise_lora(model, seed=seed)
    return model


def test_folder_has_peft_layout_and_round_trips_with_prompt(tmp_path, feats):
    base = standin_small().eval()
    model = _trained(base, r=4, lora_alpha=8, target_modules=["attn", "mlp"], enable_prompt=True,
                     target_stages=[3, 4])
    path = save_lora_checkpoint(model, tmp_path / "adapter", metadata={"task": "seg", "step": 7})
    assert sorted(p.name for p in path.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "lora3d_metadata.json"]
    config = LoraConfig.from_pretrained(str(path))
    assert (config.r, config.lora_alpha) == (4, 8)
    assert sorted(config.target_modules) == sorted(model.lora3d_targets["default"]["modules"])
    keys = set(load_file(path / "adapter_model.safetensors"))
    # PEFT's save_pretrained layout: `PeftModel.from_pretrained` expects the `base_model.model.` prefix.
    assert "base_model.model.enc.enc3.block0.attn.qkv.lora_A.weight" in keys
    assert "base_model.model.lora3d_prompt.enc4.fc2.up.weight" in keys
    assert not any(".default." in k for k in keys)
    meta = json.loads((path / "lora3d_metadata.json").read_text())
    assert meta["user"] == {"task": "seg", "step": 7}
    assert (meta["r"], meta["lora_alpha"], meta["prompt"]["hidden"]) == (4, 8, 32)
    assert meta["base_fingerprint"] == base_fingerprint(base)
    assert meta["lora3d_version"]
    # Into a fresh copy of the base: the adapter is injected from the files and reproduces the output.
    fresh = copy.deepcopy(base)
    load_lora_checkpoint(fresh, path)
    torch.testing.assert_close(fresh(feats), model(feats), rtol=0, atol=0)
    assert fresh.lora3d_targets["default"]["enable_prompt"] is True
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_peft_functions_accept_the_folder(tmp_path):
    base = tiny_ptv3()
    data = ptv3_input()
    model = _trained(base, r=2, encoder_only=False)
    path = save_lora_checkpoint(model, tmp_path / "adapter")
    plain = copy.deepcopy(base)
    inject_adapter_in_model(LoraConfig.from_pretrained(str(path)), plain)
    result = set_peft_model_state_dict(plain, load_file(path / "adapter_model.safetensors"))
    assert not result.unexpected_keys
    plain.eval()
    torch.testing.assert_close(run_ptv3(plain, data), run_ptv3(model, data), rtol=0, atol=0)


def test_diffusers_load_lora_adapter_accepts_a_dit_adapter(tmp_path):
    torch.manual_seed(0)
    base = TripoSGDiTModel(**TINY_DIT).eval()
    model = inject_lora_to_dit(copy.deepcopy(base), r=4, lora_alpha=16, blocks=[1, 11])
    randomise_lora(model)
    path = save_lora_checkpoint(model, tmp_path / "dit_adapter")
    g = torch.Generator().manual_seed(1)
    x = {"hidden_states": torch.randn(1, 5, 4, generator=g), "timestep": torch.tensor([300.0]),
         "encoder_hidden_states": torch.randn(1, 3, 6, generator=g),
         "encoder_hidden_states_2": torch.randn(1, 4, 5, generator=g)}
    other = copy.deepcopy(base)
    # The DiT's folder also holds diffusers' own file name, which `load_lora_adapter` picks by itself.
    assert (path / "pytorch_lora_weights.safetensors").is_file()
    other.load_lora_adapter(str(path), weight_name="pytorch_lora_weights.safetensors", prefix=None,
                            adapter_name="x")
    other.eval()  # diffusers builds the LoRA dropout in training mode
    torch.testing.assert_close(other(**x).sample, model(**x).sample, rtol=0, atol=0)


def test_single_safetensors_file_round_trip(tmp_path, feats):
    base = standin_small().eval()
    model = _trained(base, r=2, enable_prompt=True)
    path = save_lora_checkpoint(model, tmp_path / "adapter.safetensors", metadata={"note": "x"})
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert json.loads(header["lora3d_metadata"])["user"] == {"note": "x"}
    assert json.loads(header["lora_adapter_metadata"])["r"] == 2
    fresh = copy.deepcopy(base)
    load_lora_checkpoint(fresh, path)
    torch.testing.assert_close(fresh(feats), model(feats), rtol=0, atol=0)


def test_pth_holds_only_tensors_and_plain_values_and_is_read_with_weights_only(tmp_path, feats):
    base = standin_small().eval()
    model = _trained(base, r=2, target_stages=[4])
    pth = save_lora_checkpoint(model, tmp_path / "adapter.pth", metadata={"task": "seg"})
    payload = torch.load(pth, weights_only=True)  # no object that needs unpickling
    assert sorted(payload) == ["adapter_config", "metadata", "state_dict"]
    assert "enc.enc4.block0.attn.qkv.lora_A.weight" in payload["state_dict"]
    assert payload["metadata"]["user"] == {"task": "seg"} and payload["adapter_config"]["r"] == 2
    fresh = copy.deepcopy(base)
    load_lora_checkpoint(fresh, pth)
    torch.testing.assert_close(fresh(feats), model(feats), rtol=0, atol=0)
    folder = save_lora_checkpoint(model, tmp_path / "adapter")
    tensors = {k.removeprefix("base_model.model."): v for k, v in load_file(folder / "adapter_model.safetensors").items()}
    meta = json.loads((folder / "lora3d_metadata.json").read_text())
    # A third-party style pickle: bare `lora_A` names, nested under `state_dict`, metadata next to it.
    legacy = {k.removesuffix(".weight"): v for k, v in tensors.items()}
    torch.save({"state_dict": legacy, "metadata": meta}, tmp_path / "legacy.pth")
    fresh = copy.deepcopy(base)
    load_lora_checkpoint(fresh, tmp_path / "legacy.pth")
    torch.testing.assert_close(fresh(feats), model(feats), rtol=0, atol=0)
    torch.save({"state_dict": legacy, "callback": print}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match=r"unsafe\.pth: could not be read safely \(weights_only=True\)"):
        load_lora_checkpoint(copy.deepcopy(base), tmp_path / "unsafe.pth")


def test_other_architecture_is_refused_with_the_differing_fields(tmp_path):
    model = _trained(standin_small(), r=2)
    path = save_lora_checkpoint(model, tmp_path / "adapter")
    other = StandInPTv3(5, (8, 8, 16, 16, 48), (1, 1, 1, 2, 1))  # wider last stage, no decoder
    with pytest.raises(CheckpointError) as err:
        load_lora_checkpoint(other, path)
    message = str(err.value)
    assert message.startswith(f"{path}: adapter was made for another base architecture")
    assert "`enc.enc4.block0.attn.qkv.weight` shape (144, 48) != saved (96, 32)" in message
    assert "missing in the model" in message  # the decoder parameters
    assert list_adapters(other) == []


def test_missing_and_unexpected_tensors_are_refused_and_leave_the_model_clean(tmp_path, feats):
    base = standin_small().eval()
    model = _trained(base, r=2, enable_prompt=True)
    folder = save_lora_checkpoint(model, tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    header = {"format": "pt"}
    del tensors["base_model.model.enc.enc2.block0.attn.proj.lora_B.weight"]
    del tensors["base_model.model.lora3d_prompt.enc1.qkv.up.bias"]
    save_file(tensors, weights, metadata=header)
    fresh = copy.deepcopy(base)
    with pytest.raises(CheckpointError) as err:
        load_lora_checkpoint(fresh, folder)
    message = str(err.value)
    assert message.startswith(f"{folder}: adapter is missing 2 tensors")
    assert "`enc.enc2.block0.attn.proj.lora_B.weight`" in message
    assert "`lora3d_prompt.enc1.qkv.up.bias`" in message
    assert list_adapters(fresh) == []
    torch.testing.assert_close(fresh(feats), base(feats), rtol=0, atol=0)
    tensors = load_file(weights) | {"base_model.model.enc.enc2.block0.attn.proj.lora_B.weight": torch.zeros(8, 2),
                                    "base_model.model.lora3d_prompt.enc1.qkv.up.bias": torch.zeros(24),
                                    "base_model.model.enc.enc0.block0.extra.lora_A.weight": torch.zeros(2, 8)}
    save_file(tensors, weights, metadata=header)
    with pytest.raises(CheckpointError, match=r"tensors this model's adapter does not.*extra\.lora_A"):
        load_lora_checkpoint(copy.deepcopy(base), folder)


def test_two_adapters_loaded_by_name_switch_outputs(tmp_path, feats):
    base = standin_small().eval()
    seg = _trained(base, seed=1, r=2)
    det = _trained(base, seed=2, r=4, target_modules=["mlp"], target_stages=[2])
    save_lora_checkpoint(seg, tmp_path / "seg")
    save_lora_checkpoint(det, tmp_path / "det.safetensors")
    model = copy.deepcopy(base)
    load_lora_checkpoint(model, tmp_path / "seg", adapter_name="seg")
    load_lora_checkpoint(model, tmp_path / "det.safetensors", adapter_name="det")
    assert list_adapters(model) == ["seg", "det"]
    torch.testing.assert_close(model(feats), det(feats), rtol=0, atol=0)
    set_active_adapter(model, "seg")
    torch.testing.assert_close(model(feats), seg(feats), rtol=0, atol=0)
    assert (seg(feats) - det(feats)).abs().max() > 1e-4
    # Saving the active adapter of a multi-adapter model writes that adapter only.
    again = save_lora_checkpoint(model, tmp_path / "seg_again.safetensors")
    folder_keys = {k.removeprefix("base_model.model.") for k in load_file(tmp_path / "seg" / "adapter_model.safetensors")}
    assert set(load_file(again)) == folder_keys


def test_overwriting_a_folder_and_bad_paths(tmp_path):
    model = _trained(standin_small(), r=2)
    path = save_lora_checkpoint(model, tmp_path / "adapter")
    randomise_lora(model, seed=9)
    save_lora_checkpoint(model, path)
    saved = load_file(path / "adapter_model.safetensors")["base_model.model.enc.enc0.block0.attn.qkv.lora_B.weight"]
    torch.testing.assert_close(saved, model.enc.enc0.block0.attn.qkv.lora_B["default"].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    with pytest.raises(CheckpointError, match="adapter not found"):
        load_lora_checkpoint(standin_small(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a PEFT adapter folder"):
        load_lora_checkpoint(standin_small(), tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no LoRA adapter to save"):
        save_lora_checkpoint(standin_small(), tmp_path / "x")


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_trained_biases_round_trip_with_the_adapter(tmp_path, feats, bias):
    base = standin_small().eval()
    model = _trained(base, r=2, enable_prompt=True, target_stages=[3, 4])
    mark_only_lora_as_trainable(model, bias=bias)
    with torch.no_grad():
        model.enc.enc4.block0.attn.qkv.base_layer.bias.add_(1.0)
        model.enc.enc4.block0.norm1[0].bias.add_(1.0)
    path = save_lora_checkpoint(model, tmp_path / "adapter")
    assert LoraConfig.from_pretrained(str(path)).bias == bias
    keys = set(load_file(path / "adapter_model.safetensors"))
    assert "base_model.model.enc.enc4.block0.attn.qkv.base_layer.bias" in keys  # PEFT's name for an adapted bias
    assert ("base_model.model.enc.enc4.block0.norm1.0.bias" in keys) == (bias == "all")
    fresh = copy.deepcopy(base)
    if bias == "all":
        load_lora_checkpoint(fresh, path)
    else:
        # The norm bias changed above is frozen under "lora_only", so the saved base differs from `base`.
        with pytest.warns(Lora3dWarning, match="trained on other base weights"):
            load_lora_checkpoint(fresh, path)
    if bias == "all":
        torch.testing.assert_close(fresh(feats), model(feats), rtol=0, atol=0)
    else:
        torch.testing.assert_close(fresh.enc.enc4.block0.attn.qkv.base_layer.bias,
                                   model.enc.enc4.block0.attn.qkv.base_layer.bias)


def test_a_plain_peft_adapter_with_suffix_targets_loads(tmp_path, feats):
    # Pointcept's DefaultLORASegmentorV2 style: PEFT with target_modules=["qkv"], no lora3d metadata.
    base = standin_small().eval()
    other = copy.deepcopy(base)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["qkv"]), other)
    randomise_lora(other)
    folder = tmp_path / "peft_adapter"
    folder.mkdir()
    other.peft_config["default"].save_pretrained(str(folder))
    from peft.utils import get_peft_model_state_dict

    save_file(dict(get_peft_model_state_dict(other)), folder / "adapter_model.safetensors")
    fresh = copy.deepcopy(base)
    load_lora_checkpoint(fresh, folder)
    torch.testing.assert_close(fresh(feats), other(feats), rtol=0, atol=0)
    assert len(fresh.lora3d_targets["default"]["modules"]) == 10  # every qkv, encoder and decoder
