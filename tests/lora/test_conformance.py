"""Conformance with the tools users already have: files round-trip through the installed PEFT and diffusers,
and the Pointcept, MIDI-3D and seed layouts (built here from their documented key names) load into lora3d.

Each test compares model outputs, not just key names: an adapter that loads with every `lora_B` left at
zero would pass a key check and fail here.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from engine.cli import build_parser, main
from engine.errors import CheckpointError, CheckpointNotFoundError, Lora3dWarning
from engine.families.recipe import resolve_recipe
from engine.lora import (
    inject_lora_to_dit,
    inject_lora_to_ptv3,
    load_lora_checkpoint,
    merge_lora_weights,
    save_lora_checkpoint,
)
from engine.models.dit import TripoSGDiTModel
from engine.models.ptv3 import PTv3Segmentor, load_pretrained
from engine.models.ptv3.checkpoint import save_ptv3_checkpoint
from engine.train.trainer import train
from tests.conftest import toy_profile_dict
from tests.lora.conftest import TINY_DIT, TINY_PTV3, ptv3_input, randomise_lora, run_ptv3, tiny_ptv3

CLASSES = 5


def _dit(seed: int = 0) -> TripoSGDiTModel:
    torch.manual_seed(seed)
    return TripoSGDiTModel(**TINY_DIT).eval()


def _dit_input() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"hidden_states": torch.randn(1, 5, 4, generator=g), "timestep": torch.tensor([300.0]),
            "encoder_hidden_states": torch.randn(1, 3, 6, generator=g),
            "encoder_hidden_states_2": torch.randn(1, 4, 5, generator=g)}


def _run_dit(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**_dit_input()).sample


def _segmentor(seed: int = 0) -> PTv3Segmentor:
    torch.manual_seed(seed)
    return PTv3Segmentor(dict(TINY_PTV3), CLASSES).eval()


def _run_seg(model) -> torch.Tensor:
    with torch.no_grad():
        return model({k: v.clone() for k, v in ptv3_input().items()})


def _quiet_load(model, path, **kwargs):
    """Load and return the Lora3dWarnings raised (conversions and assumptions are reported, never silent)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_lora_checkpoint(model, path, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, Lora3dWarning)]


# ---------------------------------------------------------------- lora3d -> PEFT / diffusers


def test_lora3d_folder_loads_with_peft_from_pretrained_ptv3(tmp_path):
    base = tiny_ptv3()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=2, lora_alpha=4, target_modules=["attn", "mlp"],
                                encoder_only=False)
    randomise_lora(model)
    folder = save_lora_checkpoint(model, tmp_path / "adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT warns "Found missing adapter keys" when names do not fit
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    data = ptv3_input()
    lora3d_out, peft_out = run_ptv3(model, data), run_ptv3(peft_model, data)
    assert (lora3d_out - run_ptv3(base, data)).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(peft_out, lora3d_out, rtol=0, atol=1e-5)


def test_lora3d_folder_loads_with_peft_and_diffusers_dit(tmp_path):
    base = _dit()
    model = inject_lora_to_dit(copy.deepcopy(base), r=4, lora_alpha=8, blocks=[1, 8, 12]).eval()
    randomise_lora(model)
    folder = save_lora_checkpoint(model, tmp_path / "adapter")
    expected = _run_dit(model)
    assert (expected - _run_dit(base)).abs().max() > 1e-3
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    torch.testing.assert_close(_run_dit(peft_model), expected, rtol=0, atol=1e-5)
    other = copy.deepcopy(base)
    other.load_lora_adapter(str(folder), weight_name="pytorch_lora_weights.safetensors", prefix=None)
    torch.testing.assert_close(_run_dit(other.eval()), expected, rtol=0, atol=1e-5)


def test_lora3d_single_file_and_pth_load_with_diffusers_and_peft(tmp_path):
    base = _dit()
    model = inject_lora_to_dit(copy.deepcopy(base), r=4, lora_alpha=16, blocks=[2, 9]).eval()
    randomise_lora(model)
    expected = _run_dit(model)
    single = save_lora_checkpoint(model, tmp_path / "adapter.safetensors")
    other = copy.deepcopy(base)
    other.load_lora_adapter(str(single), use_safetensors=True, prefix=None)  # alpha from the header
    torch.testing.assert_close(_run_dit(other.eval()), expected, rtol=0, atol=1e-5)
    checkpoint = torch.load(save_lora_checkpoint(model, tmp_path / "adapter.pth"), weights_only=True)
    plain = copy.deepcopy(base)
    inject_adapter_in_model(LoraConfig.from_peft_type(**checkpoint["adapter_config"]), plain)
    set_peft_model_state_dict(plain, checkpoint["state_dict"])
    torch.testing.assert_close(_run_dit(plain.eval()), expected, rtol=0, atol=1e-5)


def test_older_lora3d_folders_without_the_prefix_still_load(tmp_path):
    base = tiny_ptv3()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=2, target_stages=[2, 3])
    randomise_lora(model)
    folder = save_lora_checkpoint(model, tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    save_file({k.removeprefix("base_model.model."): v for k, v in load_file(weights).items()}, weights)
    fresh = copy.deepcopy(base)
    assert _quiet_load(fresh, folder) == []
    torch.testing.assert_close(run_ptv3(fresh, ptv3_input()), run_ptv3(model, ptv3_input()), rtol=0, atol=0)


# ---------------------------------------------------------------- PEFT / diffusers -> lora3d


def test_peft_save_pretrained_folder_loads_into_lora3d(tmp_path):
    base = tiny_ptv3()
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "fc2"]))
    randomise_lora(peft_model)
    peft_model.eval().save_pretrained(str(tmp_path / "peft"))
    fresh = copy.deepcopy(base)
    assert _quiet_load(fresh, tmp_path / "peft") == []
    data = ptv3_input()
    torch.testing.assert_close(run_ptv3(fresh, data), run_ptv3(peft_model, data), rtol=0, atol=1e-5)
    assert fresh.peft_config["default"].lora_alpha == 8


@pytest.mark.parametrize("safe", [True, False])
def test_diffusers_save_lora_adapter_folder_loads_into_lora3d(tmp_path, safe):
    base = _dit()
    trained = copy.deepcopy(base)
    # Without a header (the .bin), diffusers assumes alpha = r; lora3d does the same and says so.
    alpha = 8 if safe else 4
    trained.add_adapter(LoraConfig(r=4, lora_alpha=alpha, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    randomise_lora(trained)
    trained.save_lora_adapter(str(tmp_path / "diffusers"), safe_serialization=safe)
    fresh = copy.deepcopy(base)
    notes = _quiet_load(fresh, tmp_path / "diffusers")
    assert (notes == []) if safe else ("assumed 4 (diffusers' rule alpha = r)" in notes[0])
    torch.testing.assert_close(_run_dit(fresh), _run_dit(trained.eval()), rtol=0, atol=1e-5)


def test_diffusers_pipeline_lora_file_loads_into_the_transformer(tmp_path):
    # A pipeline's `save_lora_weights` file: keys and header config packed under `transformer.`.
    base = _dit()
    trained = copy.deepcopy(base)
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["to_q", "to_v"])
    trained.add_adapter(config)
    randomise_lora(trained)
    tensors = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(trained).items()}
    packed = {f"transformer.{k}": (sorted(v) if isinstance(v, set) else v) for k, v in config.to_dict().items()}
    save_file(tensors, tmp_path / "pipeline_lora.safetensors",
              metadata={"format": "pt", "lora_adapter_metadata": json.dumps(packed, default=str)})
    fresh = copy.deepcopy(base)
    notes = _quiet_load(fresh, tmp_path / "pipeline_lora.safetensors")
    assert "mapped key prefix `transformer.`" in notes[0] and fresh.peft_config["default"].lora_alpha == 6
    torch.testing.assert_close(_run_dit(fresh), _run_dit(trained.eval()), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- Pointcept -> lora3d


def _pointcept_lora_segmentor(r: int, alpha: float, enc_folder=None) -> tuple[PTv3Segmentor, dict]:
    """What Pointcept's DefaultLORASegmentorV2 trains: PEFT wraps `backbone.enc` with target_modules=["qkv"].

    Returns the trained model with the wrapper taken off again (lora3d's PTv3 runs its encoder stages one by
    one, so it cannot call a wrapped `enc`; the PEFT layers stay in place) and the state dict as Pointcept
    saves it, with the wrapper on. `enc_folder`: also write `enc.save_pretrained(enc_folder)`.
    """
    model = _segmentor()
    model.backbone.enc = get_peft_model(model.backbone.enc, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.1,
                                                                       target_modules=["qkv"]))
    randomise_lora(model)
    with torch.no_grad():
        model.seg_head.weight.mul_(-2.0)  # the head trains next to the LoRA weights
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if enc_folder is not None:
        model.backbone.enc.save_pretrained(str(enc_folder))
    model.backbone.enc = model.backbone.enc.get_base_model()
    return model.eval(), state


def test_pointcept_training_checkpoint_loads_as_base_plus_adapter(tmp_path):
    trained, state = _pointcept_lora_segmentor(r=8, alpha=16)
    assert "backbone.enc.base_model.model.enc0.block0.attn.qkv.lora_A.default.weight" in state
    assert "backbone.enc.base_model.model.enc0.block0.attn.qkv.base_layer.weight" in state
    # Pointcept's CheckpointSaver under DDP: `module.` keys, optimizer state next to them.
    path = tmp_path / "model_last.pth"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}}, path)
    model = _segmentor(seed=5)  # other random weights: everything must come from the file
    with pytest.warns(Lora3dWarning, match="set aside 10 LoRA tensors"):
        assert load_pretrained(model, path).ok  # the base: frozen weights and the trained head
    notes = _quiet_load(model, path)
    assert "assumed 16" in notes[0] and "set aside" in notes[0] and "base_model.model." in notes[0]
    torch.testing.assert_close(_run_seg(model), _run_seg(trained), rtol=0, atol=1e-5)
    adapted = model.peft_config["default"].target_modules
    assert len(adapted) == 5 and all(m.startswith("backbone.enc.") and m.endswith("attn.qkv") for m in adapted)


def test_pointcept_checkpoint_with_another_alpha_takes_lora_alpha(tmp_path):
    trained, state = _pointcept_lora_segmentor(r=4, alpha=8)
    path = tmp_path / "model_best.pth"
    torch.save({"epoch": 1, "state_dict": state}, path)
    model = _segmentor()
    with pytest.warns(Lora3dWarning):
        load_pretrained(model, path)
    assert "lora_alpha" not in " ".join(_quiet_load(model, path, lora_alpha=8))  # nothing assumed
    torch.testing.assert_close(_run_seg(model), _run_seg(trained), rtol=0, atol=1e-5)


def test_pointcept_enc_save_pretrained_folder_adapts_the_encoder_only(tmp_path):
    trained, _ = _pointcept_lora_segmentor(r=4, alpha=8, enc_folder=tmp_path / "enc_adapter")
    assert json.loads((tmp_path / "enc_adapter" / "adapter_config.json").read_text())["target_modules"] == ["qkv"]
    assert "base_model.model.enc0.block0.attn.qkv.lora_A.weight" in load_file(
        tmp_path / "enc_adapter" / "adapter_model.safetensors")  # keys relative to `enc`
    model = _segmentor()
    with torch.no_grad():
        model.seg_head.weight.copy_(trained.seg_head.weight)
    notes = _quiet_load(model, tmp_path / "enc_adapter")
    assert "mapped key prefix `(none)` to the model's `backbone.enc.`" in notes[0]
    # The bare `qkv` target would also reach the decoder's qkv; only the trained encoder ones are adapted.
    assert not any(".dec." in m for m in model.peft_config["default"].target_modules)
    torch.testing.assert_close(_run_seg(model), _run_seg(trained), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- MIDI-3D -> lora3d


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_midi_custom_adapter_file_loads(tmp_path, suffix):
    # MIDIPipeline.save_custom_adapter(include_keys=["lora"]): "transformer." + the PEFT-injected
    # transformer's own state-dict names (adapter name `default` kept).
    base = _dit()
    trained = copy.deepcopy(base)
    trained.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    randomise_lora(trained)
    custom = {f"transformer.{k}": v for k, v in trained.state_dict().items() if "lora" in k}
    assert "transformer.blocks.0.attn1.to_q.lora_A.default.weight" in custom
    path = tmp_path / f"custom_adapter{suffix}"
    save_file(custom, path, metadata={"format": "pt"}) if suffix == ".safetensors" else torch.save(custom, path)
    fresh = copy.deepcopy(base)
    notes = _quiet_load(fresh, path)
    assert "mapped key prefix `transformer.` to the model's `(none)`" in notes[0]
    assert "adapter name `default`" in notes[0] and "assumed 16" in notes[0]
    torch.testing.assert_close(_run_dit(fresh), _run_dit(trained.eval()), rtol=0, atol=1e-5)


def test_midi_file_with_image_encoder_lora_and_wrong_model_are_named(tmp_path):
    base = _dit()
    custom = {"transformer.blocks.0.attn1.to_q.lora_A.default.weight": torch.zeros(2, 8),
              "transformer.blocks.0.attn1.to_q.lora_B.default.weight": torch.zeros(8, 2),
              "image_encoder_1.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(2, 8)}
    save_file(custom, tmp_path / "custom.safetensors")
    with pytest.raises(CheckpointError, match=r"adapts several models.*`image_encoder_1\.`.*only `transformer\.` fits"):
        load_lora_checkpoint(copy.deepcopy(base), tmp_path / "custom.safetensors")
    save_file({k: v for k, v in custom.items() if k.startswith("transformer.")}, tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_lora_checkpoint(tiny_ptv3(), tmp_path / "dit.safetensors")
    message = str(err.value)
    assert "got keys like `transformer.blocks.0.attn1.to_q.lora_A.weight`" in message
    assert "the model's linears are named like `enc.enc0.block0.cpe.1`" in message


def test_missing_tensor_message_shows_the_found_and_expected_suffix(tmp_path):
    base = _dit()
    model = inject_lora_to_dit(copy.deepcopy(base), r=2, blocks=[3])
    folder = save_lora_checkpoint(model, tmp_path / "adapter")
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.blocks.3.attn1.to_q.lora_B.weight"
    tensors[key.replace(".weight", ".bias")] = tensors.pop(key)[:, 0].contiguous()
    save_file(tensors, weights)
    with pytest.raises(CheckpointError, match=r"missing 1 tensors.*with `bias` where `blocks\.3\.attn1\.to_q"
                                              r"\.lora_B\.weight` has `weight`"):
        load_lora_checkpoint(copy.deepcopy(base), folder)


# ---------------------------------------------------------------- the seeds' API


def test_seed_api_pth_round_trip(tmp_path):
    base = _segmentor()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=8, lora_alpha=8, target_modules=["attn"], target_stages=[2, 3])
    randomise_lora(model)
    path = save_lora_checkpoint(model, tmp_path / "checkpoints" / "lora_adapter.pth",
                                metadata={"r": 8, "lora_alpha": 8, "target_modules": ["attn"]})
    payload = torch.load(path, weights_only=True)
    assert payload["metadata"]["user"]["target_modules"] == ["attn"]
    fresh = copy.deepcopy(base)
    assert _quiet_load(fresh, path) == []
    torch.testing.assert_close(_run_seg(fresh), _run_seg(model), rtol=0, atol=0)


def test_seed_shaped_pth_with_target_modules_metadata(tmp_path):
    # What the seed's own helpers keep: the injected model's LoRA state-dict entries and plain metadata.
    base = _segmentor()
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=4, lora_alpha=8, target_modules=["attn"], target_stages=[3])
    randomise_lora(model)
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    torch.save({"state_dict": lora, "metadata": {"r": 4, "lora_alpha": 8, "target_modules": ["attn"]}},
               tmp_path / "adapter.pth")
    fresh = copy.deepcopy(base)
    _quiet_load(fresh, tmp_path / "adapter.pth")
    assert fresh.peft_config["default"].lora_alpha == 8  # from the seed's metadata, nothing assumed
    torch.testing.assert_close(_run_seg(fresh), _run_seg(model), rtol=0, atol=0)
    torch.save({"state_dict": lora, "metadata": {"r": 4, "lora_alpha": 8, "target_modules": ["mlp"]}},
               tmp_path / "mislabelled.pth")
    with pytest.raises(CheckpointError, match=r"metadata `target_modules` \['mlp'\] do not cover the tensors"):
        load_lora_checkpoint(copy.deepcopy(base), tmp_path / "mislabelled.pth")


def test_missing_adapter_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_lora_checkpoint(tiny_ptv3(), tmp_path / "nope.pth")
    assert isinstance(err.value, CheckpointNotFoundError) and str(err.value).startswith(f"{tmp_path / 'nope.pth'}:")


# ---------------------------------------------------------------- merged checkpoints


@pytest.mark.parametrize("bare", [False, True])
def test_merged_checkpoint_loads_strictly_into_a_plain_segmentor(tmp_path, bare):
    model = inject_lora_to_ptv3(_segmentor(), r=4, lora_alpha=8, target_modules=["attn", "mlp"])
    randomise_lora(model)
    expected = _run_seg(model)
    merge_lora_weights(model)
    out = save_ptv3_checkpoint(model.state_dict(), tmp_path / "merged.pth", bare=bare, info={"adapter": "x"})
    checkpoint = torch.load(out, weights_only=True)
    if bare:
        weight = checkpoint
    else:
        # What Pointcept's / SceneSplat's tester does with `weight=merged.pth` on one GPU.
        assert checkpoint["epoch"] == 0 and checkpoint["lora3d"] == {"adapter": "x"}
        weight = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    plain = PTv3Segmentor(dict(TINY_PTV3), CLASSES).eval()
    plain.load_state_dict(weight, strict=True)
    torch.testing.assert_close(_run_seg(plain), expected, rtol=0, atol=1e-5)


def test_merge_help_says_which_tool_loads_which_file():
    merge = build_parser()._subparsers._group_actions[0].choices["merge"]
    text = merge.format_help()
    assert "--bare" in text and "Pointcept / SceneSplat tester" in text and "from_pretrained(folder)" in text


# ---------------------------------------------------------------- base checks


def test_other_base_weights_warn_naming_both_and_the_same_base_is_quiet(tmp_path):
    base = _segmentor(seed=0)
    model = inject_lora_to_ptv3(copy.deepcopy(base), r=2)
    model.seg_head.requires_grad_(True)  # trained with the adapter: its change is not "another base"
    randomise_lora(model)
    with torch.no_grad():
        model.seg_head.weight.add_(1.0)
    folder = save_lora_checkpoint(model, tmp_path / "adapter", metadata={"pretrained": "base_a.pth"})
    assert _quiet_load(copy.deepcopy(base), folder) == []
    # The same base in another precision is the same base (training in fp32, inference in fp16 or bf16).
    assert _quiet_load(copy.deepcopy(base).half(), folder) == []
    assert _quiet_load(copy.deepcopy(base).bfloat16(), folder) == []
    notes = _quiet_load(_segmentor(seed=1), folder, base_name="base_b.pth")
    assert len(notes) == 1 and "trained on other base weights (base_a.pth, weights digest" in notes[0]
    assert "than this base (base_b.pth, weights digest" in notes[0]
    assert len(_quiet_load(_segmentor(seed=1).bfloat16(), folder)) == 1  # other weights in another precision


def test_merge_bare_is_refused_where_there_is_no_pointcept_layout(tmp_path, capsys):
    data = toy_profile_dict(tmp_path)
    data["train"].update(max_steps=2, checkpoint_every=2)
    run = train(resolve_recipe(data), install_signal_handlers=False)
    capsys.readouterr()
    code = main(["merge", str(run.run_dir), "--out", str(tmp_path / "merged.pth"), "--bare"])
    err = capsys.readouterr().err
    assert code == 2 and "the toy family writes no merged checkpoint" in err
    assert not (tmp_path / "merged.pth").exists()
