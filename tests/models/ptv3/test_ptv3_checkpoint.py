"""Tests PTv3 checkpoint loading (prefixes, .pth weights_only, safetensors, refusals) and the heads."""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import CheckpointError
from engine.models.ptv3 import (
    PointTransformerV3,
    PTv3LanguageModel,
    PTv3Segmentor,
    load_pretrained,
    load_ptv3_state_dict,
)

TINY = dict(in_channels=4, order=("z", "hilbert"), stride=(2,), enc_depths=(1, 1), enc_channels=(8, 16),
            enc_num_head=(1, 2), enc_patch_size=(16, 16), dec_depths=(1,), dec_channels=(12,), dec_num_head=(2,),
            dec_patch_size=(16,), mlp_ratio=2, drop_path=0.0)


def _data() -> dict:
    gen = torch.Generator().manual_seed(0)
    cells = torch.randperm(12**3, generator=gen)[:200]
    grid = torch.stack([cells // 144, (cells // 12) % 12, cells % 12], 1)
    return dict(coord=grid.float() * 0.02, grid_coord=grid, feat=torch.randn(200, 4, generator=gen),
                offset=torch.tensor([120, 200]))


def _trained_backbone(seed: int = 0) -> PointTransformerV3:
    torch.manual_seed(seed)
    model = PointTransformerV3(**TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    ("prefix", "wrap"),
    [("", False), ("module.backbone.", True), ("backbone.", False), ("module.", True)],
    ids=["bare", "ddp-training-ckpt", "wrapper-bare", "ddp-backbone"],
)
def test_pth_variants_load_into_a_backbone(tmp_path, prefix, wrap):
    src = _trained_backbone()
    state = {prefix + k: v for k, v in src.state_dict().items()}
    obj = {"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}} if wrap else state
    path = tmp_path / "model_last.pth"
    torch.save(obj, path)
    dst = PointTransformerV3(**TINY)
    report = load_pretrained(dst, path)
    assert report.ok and len(report.loaded) == len(src.state_dict())
    _assert_same_weights(src, dst)


def test_safetensors_loads_and_reproduces_outputs(tmp_path):
    src = _trained_backbone()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    dst = PointTransformerV3(**TINY).eval()
    load_pretrained(dst, tmp_path / "w.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(dst(_data()).feat, src(_data()).feat, atol=0, rtol=0)


def test_pickled_object_is_refused_with_conversion_advice(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": _trained_backbone().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as info:
        load_ptv3_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the checkpoint holds objects that need unsafe pickle loading, "
                              "got 'argparse.Namespace'.")
    assert "save_file" in message and "model.safetensors" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "checkpoint file not found"),
        (b"", "checkpoint file is empty"),
        (b"not a zip file at all", "corrupt or truncated checkpoint"),
        ("truncate", "corrupt or truncated checkpoint"),
    ],
    ids=["missing", "empty", "garbage", "truncated"],
)
def test_broken_pth_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "model.pth"
    if content == "truncate":
        torch.save(_trained_backbone().state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"^{path}: {message}"):
        load_ptv3_state_dict(path)


def test_corrupt_safetensors_names_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json}...")
    with pytest.raises(CheckpointError, match=f"^{path}: not a readable safetensors file"):
        load_ptv3_state_dict(path)


def test_non_state_dict_content_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="no state dict of tensors found, got list"):
        load_ptv3_state_dict(path)


def test_mismatch_report_and_strict_error(tmp_path):
    src = _trained_backbone()
    state = dict(src.state_dict())
    state.pop("enc.enc0.block0.attn.qkv.bias")
    state["enc.enc0.block0.attn.extra"] = torch.zeros(1)
    state["embedding.stem.conv.weight"] = torch.zeros(8, 5, 5, 5, 6)  # checkpoint for in_channels=6
    path = tmp_path / "m.safetensors"
    save_file(state, path)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(PointTransformerV3(**TINY), path)
    message = str(info.value)
    assert message.startswith(f"{path}: checkpoint does not match the model")
    assert "1 missing (first ['enc.enc0.block0.attn.qkv.bias'])" in message
    assert "1 unexpected (first ['enc.enc0.block0.attn.extra'])" in message
    assert "'embedding.stem.conv.weight': checkpoint (8, 5, 5, 5, 6) vs model (8, 5, 5, 5, 4)" in message

    dst = PointTransformerV3(**TINY)
    report = load_pretrained(dst, path, strict=False)
    assert not report.ok
    assert report.missing == ["enc.enc0.block0.attn.qkv.bias"]
    assert report.unexpected == ["enc.enc0.block0.attn.extra"]
    assert report.mismatched == [("embedding.stem.conv.weight", (8, 5, 5, 5, 6), (8, 5, 5, 5, 4))]
    assert torch.equal(dst.state_dict()["enc.enc0.block0.cpe.0.weight"], src.state_dict()["enc.enc0.block0.cpe.0.weight"])


def test_segmentor_keys_forward_and_checkpoint_roundtrip(tmp_path):
    model = PTv3Segmentor(TINY, num_classes=5).eval()
    keys = list(model.state_dict())
    assert all(k.startswith(("backbone.", "seg_head.")) for k in keys)
    assert "seg_head.weight" in keys and model.state_dict()["seg_head.weight"].shape == (5, 12)
    with torch.no_grad():
        logits = model(_data())
    assert logits.shape == (200, 5)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, tmp_path / "seg.pth")
    other = PTv3Segmentor(TINY, num_classes=5).eval()
    assert load_pretrained(other, tmp_path / "seg.pth").ok
    with torch.no_grad():
        torch.testing.assert_close(other(_data()), logits, atol=0, rtol=0)


def test_segmentor_from_backbone_checkpoint_reports_missing_head(tmp_path):
    src = _trained_backbone()
    save_file(src.state_dict(), tmp_path / "bb.safetensors")
    seg = PTv3Segmentor(PointTransformerV3(**TINY), num_classes=3)
    with pytest.raises(CheckpointError, match="2 missing"):
        load_pretrained(seg, tmp_path / "bb.safetensors")
    report = load_pretrained(seg, tmp_path / "bb.safetensors", strict=False)
    assert report.missing == ["seg_head.weight", "seg_head.bias"] and not report.unexpected
    _assert_same_weights(src, seg.backbone)


def test_language_model_loads_a_scenesplat_style_checkpoint(tmp_path):
    src = _trained_backbone()
    # SceneSplat's LangPretrainer saved under DDP: module.backbone.<key>, no head
    torch.save({"epoch": 1, "state_dict": {f"module.backbone.{k}": v for k, v in src.state_dict().items()},
                "best_metric_value": 0.5}, tmp_path / "model_best.pth")
    lang = PTv3LanguageModel(PointTransformerV3(**TINY)).eval()
    assert all(k.startswith("backbone.") for k in lang.state_dict())
    assert load_pretrained(lang, tmp_path / "model_best.pth").ok
    with torch.no_grad():
        feat = lang(_data())
        raw = src(_data()).feat
    assert feat.shape == (200, 12) and lang.embed_dim == 12
    torch.testing.assert_close(feat.norm(dim=1), torch.ones(200))
    torch.testing.assert_close(feat, raw / raw.norm(dim=1, keepdim=True))
