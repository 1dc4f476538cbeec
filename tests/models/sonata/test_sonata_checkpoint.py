"""Loading Sonata/Concerto pretraining, Pointcept segmentor and DefaultLORASegmentorV2 checkpoints.

Fixtures follow the documented key layouts; the DefaultLORASegmentorV2 one is produced by real
`peft.get_peft_model` on the encoder, as Pointcept builds it.
"""

from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

from engine.errors import CheckpointError
from engine.models.sonata import (
    PointTransformerV3M2,
    SonataSegmentor,
    inject_pointcept_lora,
    load_sonata_checkpoint,
    pointcept_state_dict,
)

TINY = dict(
    in_channels=6, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2),
    enc_depths=(1, 1, 2), enc_channels=(8, 16, 24), enc_num_head=(2, 2, 4), enc_patch_size=(16, 16, 16),
    dec_depths=(1, 1), dec_channels=(8, 16), dec_num_head=(2, 2), dec_patch_size=(16, 16),
    mlp_ratio=2, drop_path=0.0, enable_flash=False, shuffle_orders=False, enc_mode=True,
    sparse_conv_backend="torch", attention_backend="sdpa",
)
NUM_CLASSES = 5


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    return model


def _segmentor(seed: int = 0, **overrides) -> SonataSegmentor:
    torch.manual_seed(seed)
    return SonataSegmentor(dict(TINY, **overrides), NUM_CLASSES).eval()


def _save(path, state: dict, wrapper: bool = True) -> None:
    obj = {"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}, "scheduler": None,
           "scaler": None, "best_metric_value": -math.inf} if wrapper else state
    torch.save(obj, path)


def _assert_same(model: torch.nn.Module, reference: dict[str, torch.Tensor], keys) -> None:
    own = model.state_dict()
    for key in keys:
        assert torch.equal(own[key], reference[key]), key


def test_pretraining_checkpoint_loads_the_student_backbone(tmp_path):
    student = _randomised(PointTransformerV3M2(**TINY, mask_token=True), 1).state_dict()
    teacher = _randomised(PointTransformerV3M2(**TINY, mask_token=True), 2).state_dict()
    state = {f"module.student.backbone.{k}": v for k, v in student.items()}
    state |= {f"module.teacher.backbone.{k}": v for k, v in teacher.items()}
    state |= {"module.student.mask_head.weight": torch.zeros(4, 56), "module.teacher.mask_head.weight": torch.zeros(4, 56)}
    _save(tmp_path / "model_last.pth", state)

    model = _segmentor()
    head_before = model.seg_head.weight.clone()
    report = load_sonata_checkpoint(model, tmp_path / "model_last.pth")
    assert report.layout == "pretraining" and report.ok
    assert len(report.loaded) == len(student) - 1  # every student key but the mask token
    assert "backbone.embedding.mask_token" in report.skipped
    assert sum(k.startswith("teacher.") for k in report.skipped) == len(teacher) + 1
    assert report.kept_init == ["seg_head.weight", "seg_head.bias"]
    assert any("mask token" in n for n in report.notes) and any("seg_head" in n for n in report.notes)
    _assert_same(model.backbone, student, [k for k in model.backbone.state_dict()])
    assert torch.equal(model.seg_head.weight, head_before)


@pytest.mark.parametrize("ddp", [False, True], ids=["single", "ddp"])
def test_segmentor_checkpoint_loads_into_segmentor_and_backbone(tmp_path, ddp):
    source = _randomised(_segmentor(), 3).state_dict()
    _save(tmp_path / "seg.pth", {("module." if ddp else "") + k: v for k, v in source.items()})
    model = _segmentor()
    report = load_sonata_checkpoint(model, tmp_path / "seg.pth")
    assert report.layout == "segmentor" and report.ok and not report.skipped and not report.kept_init
    _assert_same(model, source, source)

    backbone = PointTransformerV3M2(**TINY)
    report = load_sonata_checkpoint(backbone, tmp_path / "seg.pth")
    assert report.ok and report.skipped == ["seg_head.bias", "seg_head.weight"]
    _assert_same(backbone, {k[len("backbone."):]: v for k, v in source.items()}, backbone.state_dict())


def _pointcept_lora_state(seed: int) -> dict[str, torch.Tensor]:
    """DefaultLORASegmentorV2(use_lora=True, r=4, alpha=8).state_dict(), built as Pointcept builds it."""
    upstream = _randomised(_segmentor(), seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["qkv"], lora_dropout=0.1, bias="none")
    upstream.backbone.enc = get_peft_model(upstream.backbone.enc, config)
    _randomised(upstream, seed + 1)  # non-zero lora_B
    return upstream.state_dict()


def test_lora_segmentor_checkpoint_loads_and_round_trips(tmp_path):
    state = _pointcept_lora_state(5)
    assert "backbone.enc.base_model.model.enc2.block1.attn.qkv.lora_B.default.weight" in state
    _save(tmp_path / "model_last.pth", {f"module.{k}": v for k, v in state.items()})

    model = _segmentor()
    inject_pointcept_lora(model, r=4, lora_alpha=8, lora_dropout=0.1)
    report = load_sonata_checkpoint(model, tmp_path / "model_last.pth")
    assert report.layout == "lora_segmentor" and report.ok and report.lora_rank == 4
    assert len(report.loaded) == len(state) and not report.kept_init and not report.skipped
    exported = pointcept_state_dict(model)
    assert list(exported) == list(state)
    assert all(torch.equal(exported[k], v) for k, v in state.items())

    # The exported file loads again (lora3d -> Pointcept -> lora3d).
    save_file({k: v.contiguous() for k, v in exported.items()}, str(tmp_path / "again.safetensors"))
    again = _segmentor(seed=9)
    inject_pointcept_lora(again, r=4, lora_alpha=8, lora_dropout=0.1, adapter_name="scannet")
    assert load_sonata_checkpoint(again, tmp_path / "again.safetensors").ok
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_lora_checkpoint_into_a_plain_model_names_the_fix(tmp_path):
    save_file(_pointcept_lora_state(5), str(tmp_path / "lora.safetensors"))
    with pytest.raises(CheckpointError, match=r"inject_pointcept_lora\(model, r=4"):
        load_sonata_checkpoint(_segmentor(), tmp_path / "lora.safetensors")
    model = _segmentor()
    inject_pointcept_lora(model, r=8, lora_alpha=16)
    with pytest.raises(CheckpointError, match="inject with r=4"):
        load_sonata_checkpoint(model, tmp_path / "lora.safetensors")


def test_plain_weights_load_under_lora_layers_which_keep_their_init(tmp_path):
    source = _randomised(_segmentor(), 3).state_dict()
    save_file(source, str(tmp_path / "seg.safetensors"))
    model = _segmentor()
    inject_pointcept_lora(model)
    report = load_sonata_checkpoint(model, tmp_path / "seg.safetensors")
    assert report.ok and len(report.kept_init) == 2 * 4 and all(".lora_" in k for k in report.kept_init)
    assert torch.equal(model.backbone.enc.enc1.block0.attn.qkv.base_layer.weight,
                       source["backbone.enc.enc1.block0.attn.qkv.weight"])
    assert any("LoRA" in n for n in report.notes)


def test_unknown_prefix_is_named_and_prefix_argument_reads_it(tmp_path):
    source = _randomised(PointTransformerV3M2(**TINY), 4).state_dict()
    save_file({f"model.encoder.{k}": v for k, v in source.items()}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match=r"odd\.safetensors: .*'model\.encoder\.' \(\d+ keys\).*prefix='model\.encoder\.'"):
        load_sonata_checkpoint(PointTransformerV3M2(**TINY), tmp_path / "odd.safetensors")
    model = PointTransformerV3M2(**TINY)
    report = load_sonata_checkpoint(model, tmp_path / "odd.safetensors", prefix="model.encoder.")
    assert report.layout == "prefix" and report.ok
    with pytest.raises(CheckpointError, match="no keys under prefix 'model.backbone.'"):
        load_sonata_checkpoint(model, tmp_path / "odd.safetensors", prefix="model.backbone.")


def test_mismatches_explain_the_config_to_use(tmp_path):
    save_file(_randomised(_segmentor(), 3).state_dict(), str(tmp_path / "enc.safetensors"))
    decoder = _segmentor(enc_mode=False)
    with pytest.raises(CheckpointError, match="no decoder: build the model with enc_mode=True"):
        load_sonata_checkpoint(decoder, tmp_path / "enc.safetensors")
    report = load_sonata_checkpoint(decoder, tmp_path / "enc.safetensors", strict=False)
    assert report.missing and all(k.startswith("backbone.dec.") for k in report.missing)
    assert [k for k, _, _ in report.mismatched] == ["seg_head.weight"]  # 56 concatenated vs 8 decoder channels

    other = SonataSegmentor(dict(TINY), NUM_CLASSES + 2)
    with pytest.raises(CheckpointError, match="another number of classes"):
        load_sonata_checkpoint(other, tmp_path / "enc.safetensors")


def test_unsafe_pickle_is_refused(tmp_path):
    state = copy.deepcopy(_segmentor().state_dict())
    torch.save({"state_dict": state, "cfg": argparse.Namespace(epoch=1)}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="unsafe pickle"):
        load_sonata_checkpoint(_segmentor(), tmp_path / "unsafe.pth")
