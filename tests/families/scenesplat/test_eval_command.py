"""Tests `lora3d eval` on SceneSplat runs: the training metric reproduced, full-scene tables, files, bad adapters."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.cli import main
from engine.families.scenesplat.adapters import HEAD_FILE


def _last_eval(run: Path) -> dict:
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["type"] == "eval"][-1]["metrics"]


def test_eval_reproduces_the_runs_training_metric_and_writes_json_and_csv(semseg_run, tmp_path, capsys):
    rc = main(["eval", str(semseg_run), "--json", "--json-out", str(tmp_path / "r.json"), "--csv",
               str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out)
    assert json.loads((tmp_path / "r.json").read_text()) == report
    names = [m["name"] for m in report["models"]]
    assert names == ["base", "adapter"]
    adapter = report["models"][1]
    trained = _last_eval(semseg_run)
    assert set(adapter["training_metrics"]) == set(trained)
    for key, value in trained.items():
        assert adapter["training_metrics"][key] == pytest.approx(value, abs=1e-6), key
    full = adapter["metrics"]
    assert {"miou", "macc", "allacc", "fg_miou", "iou/floor", "acc/floor"} <= set(full)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {(r["model"], r["scope"]) for r in rows} == {("base", "eval"), ("base", "training"), ("adapter", "eval"),
                                                          ("adapter", "training")}
    miou = next(r for r in rows if r["model"] == "adapter" and r["scope"] == "eval" and r["metric"] == "miou")
    assert float(miou["value"]) == pytest.approx(full["miou"], abs=1e-12)
    assert any("Gaussians in 1 scene(s)" in n for n in report["notes"])


def test_eval_prints_the_summary_and_per_class_tables(semseg_run, capsys):
    assert main(["eval", str(semseg_run), "--no-base", "--no-training-metrics"]) == 0
    out = capsys.readouterr().out
    assert "per class" in out and "adapter IoU" in out and "base" not in out.split("per class")[1]
    for name in ("floor", "wall", "table", "ball", "column", "plant"):
        assert name in out


def test_eval_of_an_adapter_for_another_class_count_exits_2_and_writes_nothing(semseg_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(semseg_run / "adapter", other)
    save_file({"seg_head.weight": torch.zeros(9, 32), "seg_head.bias": torch.zeros(9)}, str(other / HEAD_FILE))
    rc = main(["eval", str(semseg_run), "--adapter", str(other), "--csv", str(tmp_path / "r.csv")])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(other / HEAD_FILE) in err and "num_classes" in err
    assert not (tmp_path / "r.csv").exists()


def test_eval_refuses_an_adapter_trained_for_another_task(semseg_run, lang_run, capsys):
    rc = main(["eval", str(semseg_run), "--adapter", str(lang_run / "adapter")])
    err = capsys.readouterr().err
    assert rc == 2 and str(lang_run / "adapter") in err and "`model.task: lang`" in err


def test_eval_of_a_lang_run_scores_zero_shot_labels(lang_run, capsys):
    assert main(["eval", str(lang_run / "adapter"), "--json", "--no-base"]) == 0  # an adapter folder of a run
    report = json.loads(capsys.readouterr().out)
    (adapter,) = report["models"]
    for key, value in _last_eval(lang_run).items():
        assert adapter["training_metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert 0.0 <= adapter["metrics"]["miou"] <= 1.0 and report["class_names"][0] == "floor"


def test_eval_of_a_folder_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a lora3d run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_of_the_demo_run_reproduces_its_training_metric(tmp_path, monkeypatch, capsys):
    import io

    from rich.console import Console

    from engine.families.scenesplat import demo

    monkeypatch.setenv("LORA3D_CACHE", str(tmp_path / "cache"))
    result = demo.run_demo(tmp_path / "run", console=Console(file=io.StringIO()), quick=True, seed=0)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    base, adapter = json.loads(capsys.readouterr().out)["models"]
    for key, value in _last_eval(tmp_path / "run").items():
        assert adapter["training_metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert adapter["training_metrics"]["miou"] == pytest.approx(result["adapted_miou"], abs=1e-6)
    assert base["training_metrics"]["miou"] == pytest.approx(result["base_miou"], abs=1e-6)
    assert adapter["metrics"]["miou"] > base["metrics"]["miou"]  # full scene too, the adapter wins
