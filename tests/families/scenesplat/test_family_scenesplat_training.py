"""Tests the scenesplat family end to end on tiny data: loaders, steps, base loading, resume, merge export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_scenesplat import tiny_profile, write_base_checkpoint

from engine.errors import CheckpointError
from engine.families.scenesplat.adapters import HEAD_FILE, load_adapter
from engine.families.scenesplat.family import SceneSplatFamily
from engine.families.scenesplat.options import DEMO_TINY_CONFIG
from engine.families.scenesplat.task import model_inputs
from engine.lora.inject import apply_lora_spec
from engine.models.ptv3 import PTv3LanguageModel, PTv3Segmentor, load_pretrained
from engine.train.trainer import Trainer, TrainerHooks, train

FAMILY = SceneSplatFamily()


def _batch(profile, indices=(0, 1), split="train"):
    train_ds, val_ds = FAMILY.build_datasets(profile)
    ds = train_ds if split == "train" else val_ds
    return FAMILY.collate([ds[i] for i in indices])


def test_synthetic_loaders_are_deterministic_per_epoch(tmp_path):
    profile = tiny_profile(tmp_path)
    train_ds, val_ds = FAMILY.build_datasets(profile)
    assert (len(train_ds), len(val_ds)) == (2, 1)
    a, b = train_ds[0], train_ds[0]
    np.testing.assert_array_equal(a["coord"], b["coord"])
    assert a["feat"].shape[1] == 11 and a["grid_coord"].dtype.kind == "i"
    train_ds.set_epoch(1)
    assert not np.array_equal(train_ds[0]["coord"][:20], a["coord"][:20])
    batch = FAMILY.collate([train_ds[0], train_ds[1]])
    assert batch["offset"].tolist()[-1] == batch["coord"].shape[0] and len(batch["offset"]) == 2
    assert set(batch["segment"].unique().tolist()) <= set(range(6))


def test_loaders_read_a_scene_folder(tmp_path):
    from engine.families.scenesplat.synthetic import write_synthetic_dataset

    root = tmp_path / "scenes"
    write_synthetic_dataset(root, num_train=2, num_val=1, num_points=300, lang_dim=32)
    profile = tiny_profile(tmp_path, data={"root": str(root)}, model={"task": "lang"})
    train_ds, val_ds = FAMILY.build_datasets(profile)
    assert (len(train_ds), len(val_ds)) == (2, 1)
    batch = FAMILY.collate([train_ds[0]])
    assert batch["lang_feat"].shape == (batch["coord"].shape[0], 32) and batch["valid_feat_mask"].dtype == torch.bool


@pytest.mark.parametrize("task", ["semseg", "lang"])
def test_training_step_has_finite_loss_and_gradients_reach_lora(tmp_path, task):
    profile = tiny_profile(tmp_path, model={"task": task})
    model = apply_lora_spec(FAMILY.build_model(profile), profile.lora)
    assert isinstance(model, PTv3Segmentor if task == "semseg" else PTv3LanguageModel)
    model.train()
    out = profile.task.loss(model, _batch(profile))
    assert torch.isfinite(out.loss) and out.num_samples == 2 and out.num_tokens > 0
    out.loss.backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert sum(float(p.grad.abs().sum()) for p in lora_b) > 0
    frozen = [n for n, p in model.named_parameters() if p.grad is not None and "lora_" not in n]
    assert frozen == (["seg_head.weight", "seg_head.bias"] if task == "semseg" else [])
    if task == "lang":
        assert {"cos", "l2"} <= set(out.metrics)


def test_frozen_batch_norm_keeps_running_statistics(tmp_path):
    profile = tiny_profile(tmp_path)
    model = apply_lora_spec(FAMILY.build_model(profile), profile.lora)
    before = model.backbone.embedding.stem.norm.running_mean.clone()
    model.train()
    profile.task.loss(model, _batch(profile)).loss.backward()
    torch.testing.assert_close(model.backbone.embedding.stem.norm.running_mean, before)


def test_base_checkpoint_loads_strictly_with_or_without_its_head(tmp_path):
    state = write_base_checkpoint(tmp_path / "base.pth", num_classes=6)
    profile = tiny_profile(tmp_path, model={"pretrained": str(tmp_path / "base.pth")})
    model = FAMILY.build_model(profile)
    assert model.lora3d_base["head"] == "loaded"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert not any(p.requires_grad for p in model.parameters())
    other = FAMILY.build_model(tiny_profile(tmp_path, model={"pretrained": str(tmp_path / "base.pth"), "num_classes": 8}))
    assert other.lora3d_base["head"] == "skipped" and other.seg_head.out_features == 8
    lang = FAMILY.build_model(tiny_profile(tmp_path, model={"pretrained": str(tmp_path / "base.pth"), "task": "lang"}))
    torch.testing.assert_close(lang.backbone.state_dict()["enc.enc0.block0.attn.qkv.weight"],
                               state["backbone.enc.enc0.block0.attn.qkv.weight"])


def test_base_checkpoint_of_another_architecture_is_refused(tmp_path):
    write_base_checkpoint(tmp_path / "base.pth")
    profile = tiny_profile(tmp_path, model={"pretrained": str(tmp_path / "base.pth"), "backbone": "pointcept"})
    with pytest.raises(CheckpointError, match="the checkpoint's backbone does not match `model.backbone`"):
        FAMILY.build_model(profile)


def _adapter_tensors(run_dir):
    tensors = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    tensors.update(load_file(str(run_dir / "adapter" / HEAD_FILE)))
    return tensors


def test_resume_gives_the_same_adapter_as_a_straight_run(tmp_path):
    write_base_checkpoint(tmp_path / "base.pth")
    common = {"model": {"pretrained": str(tmp_path / "base.pth")}, "train": {"max_steps": 4}}
    straight = tiny_profile(tmp_path, **common, output={"dir": str(tmp_path / "straight")})
    train(straight, install_signal_handlers=False)

    def stop_at_2(trainer):
        if trainer.state.step == 2:
            trainer.stop_reason = "SIGINT"

    halves = tiny_profile(tmp_path, **common, output={"dir": str(tmp_path / "halves")})
    first = Trainer(halves, hooks=TrainerHooks(after_step=stop_at_2), install_signal_handlers=False).run()
    assert first.status == "stopped" and first.step == 2
    resumed = train(tiny_profile(tmp_path, **common), run_dir=tmp_path / "halves", resume=True,
                    install_signal_handlers=False)
    assert resumed.step == 4
    a, b = _adapter_tensors(tmp_path / "straight"), _adapter_tensors(tmp_path / "halves")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".pth", pytest.param(".safetensors", marks=pytest.mark.slow)])
def test_merged_export_loads_strictly_into_a_plain_model_and_matches(tmp_path, suffix):
    write_base_checkpoint(tmp_path / "base.pth")
    profile = tiny_profile(tmp_path, model={"pretrained": str(tmp_path / "base.pth")}, train={"max_steps": 2, "lr": 0.05})
    run = train(profile, install_signal_handlers=False)
    out = FAMILY.merge_adapter(profile, run.run_dir / "adapter", tmp_path / f"merged{suffix}")
    assert out.is_file() and not list(tmp_path.glob(".merged*"))
    # .pth: Pointcept's layout, as SceneSplat's tester reads it (`checkpoint["state_dict"]`, `["epoch"]`).
    state = torch.load(out, weights_only=True)["state_dict"] if suffix == ".pth" else load_file(str(out))
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any("lora" in k or "base_layer" in k for k in state)
    plain = PTv3Segmentor(dict(DEMO_TINY_CONFIG), 6)
    plain.load_state_dict(state, strict=True)
    assert load_pretrained(PTv3Segmentor(dict(DEMO_TINY_CONFIG), 6), out).ok

    adapted = load_adapter(FAMILY.build_model(profile), run.run_dir / "adapter")
    base = FAMILY.build_model(profile)
    batch = model_inputs(_batch(profile, (0,), split="val"))
    for m in (plain, adapted, base):
        m.eval()
    with torch.no_grad():
        expected, got, before = adapted(dict(batch)), plain(dict(batch)), base(dict(batch))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (expected - before).abs().max() > 1e-3  # the adapter changed something worth merging


def test_data_check_reports_synthetic_and_folder_data(tmp_path):
    from engine.families.scenesplat.synthetic import write_synthetic_dataset

    report = FAMILY.data_check(tiny_profile(tmp_path))
    data = report.to_dict()
    assert data["problems"] == [] and data["scenes"] == {"train": 2, "val": 1}
    assert data["class_names"][0] == "floor" and "synthetic" in data["root"]
    root = tmp_path / "scenes"
    write_synthetic_dataset(root, num_train=1, num_val=1, num_points=200)
    (root / "val" / "scene_0000" / "quat.npy").write_bytes(b"broken")
    data = FAMILY.data_check(tiny_profile(tmp_path, data={"root": str(root)}, model={"num_classes": 6})).to_dict()
    assert data["scenes"] == {"train": 1, "val": 1}
    assert len(data["problems"]) == 1 and "quat.npy" in data["problems"][0][1]


def test_memory_description_comes_from_the_planner_helper(tmp_path):
    description = FAMILY.describe_memory(tiny_profile(tmp_path))
    assert description.frozen_params > 0 and description.lora_params > 0
