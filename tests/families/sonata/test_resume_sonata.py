"""Resume identity of a sonata run: the same profile continues; another setup is refused with the differences."""

from __future__ import annotations

import json
import shutil

import yaml
from tiny_sonata import tiny_profile_data

from engine.cli import main as cli_main
from engine.train.checkpoint import MANIFEST


def test_resume_continues_and_a_changed_setup_is_refused(tmp_path, capsys):
    data = tiny_profile_data(tmp_path, train={"max_steps": 2, "checkpoint_every": 1})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli_main(["train", str(path), "--quiet"]) == 0
    step2 = tmp_path / "run" / "checkpoints" / "step-2"
    identity = json.loads((step2 / MANIFEST).read_text())["identity"]
    assert identity["family"] == "sonata"
    assert identity["sonata"] == {"enc_mode": True, "head_channels": 40, "trained_modules": ["seg_head"],
                                  "base_layout": None, "base_loaded": None}

    # the same profile, interrupted after step 1: continues from step-1
    shutil.rmtree(step2)
    assert cli_main(["train", str(path), "--quiet", "--resume"]) == 0
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["resumed_from"] for e in events if e["type"] == "start"][-1] == "step-1"
    assert step2.is_dir()
    capsys.readouterr()

    # another rank, or the linear-probing preset: refused, nothing written
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    for override, difference in (("lora.r=4", "lora.r: checkpoint 8, this run 4"),
                                 ("lora.preset=linear", "lora.target_modules: checkpoint ['qkv'], this run []")):
        assert cli_main(["train", str(path), "--quiet", "--resume", "--set", override]) == 2
        err = capsys.readouterr().err
        assert "cannot be resumed here" in err and difference in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
