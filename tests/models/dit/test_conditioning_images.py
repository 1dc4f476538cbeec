"""Image conditioning: DINOv2 widening, instance splitting, torch preprocessing, local encoder folders."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import CheckpointError, DataError
from engine.models.dit.conditioning import (
    CLIP_DEFAULTS,
    DINOV2_DEFAULTS,
    build_dinov2_input,
    encode_clip_image,
    encode_dinov2_image,
    load_clip_image_encoder,
    load_dinov2_image_encoder,
    load_image_preprocessor,
    split_instances,
    widen_dinov2_patch_embed,
)

transformers = pytest.importorskip("transformers")


def _tiny_dino(channels: int = 3):
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    image_size=28, patch_size=14, num_channels=channels)
    return transformers.Dinov2Model(cfg).eval()


def _tiny_clip():
    torch.manual_seed(1)
    cfg = transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=28, patch_size=14, projection_dim=8)
    return transformers.CLIPVisionModelWithProjection(cfg).eval()


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_widen_clone_reproduces_midi_rule():
    base = _tiny_dino()
    wide = widen_dinov2_patch_embed(copy.deepcopy(base), in_channels=7, mode="clone")
    assert wide.config.num_channels == 7
    w0, w1 = base.embeddings.patch_embeddings.projection.weight, wide.embeddings.patch_embeddings.projection.weight
    assert w1.shape[1] == 7
    torch.testing.assert_close(w1, torch.cat([w0, w0, w0[:, :1]], dim=1), rtol=0, atol=0)
    a, b, m = _rand(2, 3, 28, 28, seed=1), _rand(2, 3, 28, 28, seed=2), _rand(2, 1, 28, 28, seed=3)
    with torch.no_grad():
        # a 3-channel-equivalent input: the extra channels empty
        same = wide(pixel_values=torch.cat([a, torch.zeros(2, 4, 28, 28)], 1)).last_hidden_state
        torch.testing.assert_close(same, base(pixel_values=a).last_hidden_state)
        # the cloned filters sum the instance and scene images, the mask acts as extra red
        full = wide(pixel_values=torch.cat([a, b, m], 1)).last_hidden_state
        equiv = a + b + torch.cat([m, torch.zeros(2, 2, 28, 28)], 1)
        torch.testing.assert_close(full, base(pixel_values=equiv).last_hidden_state, rtol=1e-4, atol=1e-5)


def test_widen_zero_ignores_extra_channels():
    base = _tiny_dino()
    wide = widen_dinov2_patch_embed(copy.deepcopy(base), in_channels=7, mode="zero")
    a = _rand(2, 3, 28, 28, seed=4)
    with torch.no_grad():
        got = wide(pixel_values=torch.cat([a, _rand(2, 4, 28, 28, seed=5)], 1)).last_hidden_state
        torch.testing.assert_close(got, base(pixel_values=a).last_hidden_state)


def test_widen_is_noop_at_target_and_rejects_bad_mode():
    model = _tiny_dino(7)
    before = model.embeddings.patch_embeddings.projection.weight.clone()
    widen_dinov2_patch_embed(model, 7, "clone")
    assert torch.equal(model.embeddings.patch_embeddings.projection.weight, before)
    with pytest.raises(ValueError, match="mode"):
        widen_dinov2_patch_embed(_tiny_dino(), 7, "copy")


def test_split_instances_white_background_and_masks():
    rgb = np.random.default_rng(0).integers(0, 200, (6, 5, 3), dtype=np.uint8)
    ids = np.zeros((6, 5), dtype=np.int32)
    ids[1:3, 1:3] = 4
    ids[4, :] = 2
    parts = split_instances(rgb, ids)
    assert len(parts) == 2
    for (inst, mask), iid in zip(parts, (2, 4)):  # ascending id order
        assert mask.dtype == bool and np.array_equal(mask, ids == iid)
        assert inst.shape == rgb.shape and inst.dtype == np.uint8
        assert np.array_equal(inst[mask], rgb[mask])
        assert (inst[~mask] == 255).all()
    with pytest.raises(DataError, match="id map"):
        split_instances(rgb, ids[:, :4])


def test_preprocessor_matches_transformers_processor():
    base = np.random.default_rng(0).integers(0, 256, (30, 26, 3)).astype(np.uint8)
    img = np.array(Image.fromarray(base).resize((260, 300), Image.BILINEAR))  # smooth, portrait
    ref = transformers.CLIPImageProcessor()(images=Image.fromarray(img), return_tensors="pt").pixel_values
    got = CLIP_DEFAULTS(torch.from_numpy(img).permute(2, 0, 1)[None])
    assert got.shape == ref.shape == (1, 3, 224, 224)
    # PIL resizes uint8 (one step = 1/255/std ~ 0.015 here); torch resizes float.
    assert (got - ref).abs().max() < 0.03 and (got - ref).abs().mean() < 0.01
    with pytest.raises(DataError, match="RGB"):
        CLIP_DEFAULTS(torch.zeros(1, 4, 8, 8))
    # float [0, 1] input is the same as uint8 input
    torch.testing.assert_close(CLIP_DEFAULTS(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255), got)


def test_load_preprocessor_reads_saved_config(tmp_path):
    transformers.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 28, "width": 28},
                                   image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.5, 0.5]).save_pretrained(tmp_path)
    pre = load_image_preprocessor(tmp_path, DINOV2_DEFAULTS)
    assert (pre.shortest_edge, pre.crop_hw, pre.image_mean) == (40, (28, 28), (0.1, 0.2, 0.3))
    assert load_image_preprocessor(tmp_path / "missing", DINOV2_DEFAULTS) == DINOV2_DEFAULTS
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 30},
                                                                   "do_center_crop": False}))
    pre = load_image_preprocessor(tmp_path, CLIP_DEFAULTS)
    assert pre(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape == (1, 3, 32, 30)


def test_build_dinov2_input_channel_order():
    pre = load_image_preprocessor(None, DINOV2_DEFAULTS)
    inst = torch.full((1, 3, 64, 64), 255, dtype=torch.uint8)
    scene = torch.zeros((1, 3, 64, 64), dtype=torch.uint8)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, :32] = True
    x = build_dinov2_input(pre, inst, scene, mask)
    assert x.shape == (1, 7, 224, 224)
    torch.testing.assert_close(x[:, :3], pre(inst))
    torch.testing.assert_close(x[:, 3:6], pre(scene))
    assert x[0, 6, :112].eq(1).all() and x[0, 6, 112:].eq(0).all()  # full-frame mask, nearest, in [0, 1]
    x255 = build_dinov2_input(pre, inst, scene, mask.to(torch.uint8) * 255)
    torch.testing.assert_close(x255, x)


def test_encoders_round_trip_through_local_folders(tmp_path):
    clip, dino = _tiny_clip(), widen_dinov2_patch_embed(_tiny_dino(), 7)
    clip.save_pretrained(tmp_path / "clip")
    dino.save_pretrained(tmp_path / "dino")
    clip2 = load_clip_image_encoder(tmp_path / "clip")
    dino2 = load_dinov2_image_encoder(tmp_path / "dino", dtype=torch.float32)
    assert dino2.config.num_channels == 7
    pre = CLIP_DEFAULTS.__class__(shortest_edge=28, crop_hw=(28, 28))
    imgs = torch.randint(0, 256, (2, 3, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 40, 36, dtype=torch.bool)
    with torch.no_grad():
        c1, c2 = encode_clip_image(clip, pre, imgs), encode_clip_image(clip2, pre, imgs)
        d1 = encode_dinov2_image(dino, pre, imgs, imgs, masks)
        d2 = encode_dinov2_image(dino2, pre, imgs, imgs, masks)
    assert c1.shape == (2, 1, 8) and d1.shape == (2, 1 + 4, 16)
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)
    with pytest.raises(DataError, match="scene_images"):
        encode_dinov2_image(dino, pre, imgs)


def test_missing_encoder_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_clip_image_encoder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dinov2_image_encoder(tmp_path)
