"""Local pipeline folders: tiny MIDI/TripoSG round trips in fp32/fp16 and the error paths."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.errors import CheckpointError
from engine.models.dit.pipeline import build_tiny_pipeline, detect_pipeline_kind, load_pipeline

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def midi_folder(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("midi") / "tiny", seed=3)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_midi_layout_on_disk(midi_folder):
    index = json.loads((midi_folder / "model_index.json").read_text())
    assert index["_class_name"] == "MIDIPipeline"
    for sub, file in [("transformer", "diffusion_pytorch_model.safetensors"),
                      ("vae", "diffusion_pytorch_model.safetensors"), ("scheduler", "scheduler_config.json"),
                      ("image_encoder_1", "model.safetensors"), ("image_encoder_2", "model.safetensors"),
                      ("feature_extractor_1", "preprocessor_config.json"),
                      ("feature_extractor_2", "preprocessor_config.json")]:
        assert (midi_folder / sub / file).is_file(), sub
        assert sub in index
    assert detect_pipeline_kind(midi_folder) == "midi"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_midi_round_trip(midi_folder, dtype):
    pipe = load_pipeline(midi_folder, dtype=dtype)
    assert pipe.kind == "midi" and pipe.folder == midi_folder
    assert pipe.dino.config.num_channels == 7
    assert pipe.clip_preprocessor.crop_hw == (28, 28) and pipe.dino_preprocessor.crop_hw == (28, 28)
    assert pipe.scheduler_config["num_train_timesteps"] == 1000
    for module in (pipe.transformer, pipe.vae, pipe.clip, pipe.dino):
        assert all(p.dtype == dtype for p in module.parameters())
        assert not module.training
    ref = load_pipeline(midi_folder)
    for name in ("transformer", "vae", "clip", "dino"):
        a, b = _state(getattr(pipe, name)), _state(getattr(ref, name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k].float(), b[k].to(dtype).float(), rtol=0, atol=0)
    # the loaded components run together: DiT cross-attention widths agree with the encoders
    imgs = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    masks = torch.zeros(2, 40, 40, dtype=torch.bool)
    from engine.models.dit.conditioning import encode_clip_image, encode_dinov2_image

    with torch.no_grad():
        c1 = encode_clip_image(ref.clip, ref.clip_preprocessor, imgs)
        c2 = encode_dinov2_image(ref.dino, ref.dino_preprocessor, imgs, imgs, masks)
        latents = torch.randn(2, 16, ref.vae.config.latent_channels)
        out = ref.transformer(latents, torch.tensor([500.0, 500.0]), encoder_hidden_states=c1,
                              encoder_hidden_states_2=c2, return_dict=False)[0]
        sdf = ref.vae.decode(out, torch.rand(2, 10, 3) * 2 - 1).sample
    assert out.shape == latents.shape and sdf.shape == (2, 10, 1)


def test_fp16_weights_load_into_fp32(tmp_path):
    folder = build_tiny_pipeline(tmp_path / "half", seed=3, dtype=torch.float16)
    pipe = load_pipeline(folder, dtype=torch.float32)
    ref = build_tiny_pipeline(tmp_path / "full", seed=3)
    full = load_pipeline(ref)
    w = pipe.vae.state_dict()["decoder.proj_out.weight"]
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, full.vae.state_dict()["decoder.proj_out.weight"].half().float(), rtol=0, atol=0)


def test_same_seed_same_weights_other_seed_differs(tmp_path, midi_folder):
    again = load_pipeline(build_tiny_pipeline(tmp_path / "again", seed=3)).vae.state_dict()
    other = load_pipeline(build_tiny_pipeline(tmp_path / "other", seed=4)).vae.state_dict()
    base = load_pipeline(midi_folder).vae.state_dict()
    assert all(torch.equal(base[k], again[k]) for k in base)
    assert not torch.equal(base["quant.weight"], other["quant.weight"])


def test_triposg_layout(tmp_path):
    folder = build_tiny_pipeline(tmp_path / "tsg", seed=0, kind="triposg")
    assert (folder / "image_encoder_dinov2" / "model.safetensors").is_file()
    pipe = load_pipeline(folder)
    assert pipe.kind == "triposg" and pipe.clip is None and pipe.clip_preprocessor is None
    assert pipe.dino.config.num_channels == 3


@pytest.mark.parametrize("missing", ["vae", "image_encoder_2", "scheduler", "transformer"])
def test_missing_subfolder_is_named(tmp_path, midi_folder, missing):
    broken = tmp_path / "broken"
    shutil.copytree(midi_folder, broken)
    shutil.rmtree(broken / missing)
    with pytest.raises(CheckpointError, match=f"missing subfolder `{missing}/`"):
        load_pipeline(broken)


def test_missing_files_are_named(tmp_path, midi_folder):
    broken = tmp_path / "broken"
    shutil.copytree(midi_folder, broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"vae/diffusion_pytorch_model.safetensors: missing file"):
        load_pipeline(broken)
    (broken / "model_index.json").unlink()
    with pytest.raises(CheckpointError, match="model_index.json"):
        load_pipeline(broken)
    with pytest.raises(CheckpointError, match="model folder not found"):
        load_pipeline(tmp_path / "nowhere")


def test_mismatched_weights_are_reported(tmp_path, midi_folder):
    broken = tmp_path / "broken"
    shutil.copytree(midi_folder, broken)
    cfg_path = broken / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_layers_decoder"] = 3  # one block more than the saved weights
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="vae"):
        load_pipeline(broken)
