"""A test plugin family that declares `eval` and `predict` commands, for the dashboard's follow-up actions.

Loaded with LORA3D_PLUGINS=tests.toy_family,tests.wizard.eval_plugin (the child processes the dashboard
starts import it again). The commands are fakes with observable output: `eval` prints a metric line,
`predict` writes a file into `--out` and refuses a scene without a `scene.txt`, exiting 2 as `lora3d` does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import DataError
from engine.families.entry import CliCommand
from engine.families.registry import register_family
from tests.toy_family import ToyFamily


def eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--json", action="store_true")


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--scene", required=True)
    parser.add_argument("--out", required=True)


def cmd_eval(args: argparse.Namespace) -> int:
    print(f"fake eval of {Path(args.run_dir).name}: val_loss 0.125 on 8 samples")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    scene = Path(args.scene)
    if not (scene / "scene.txt").is_file():
        raise DataError(f"{scene}: has no scene.txt. Pass a folder the fake predictor reads.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.txt").write_text((scene / "scene.txt").read_text().upper())
    print(f"wrote {out / 'labels.txt'}")
    return 0


@register_family
class EvalToyFamily(ToyFamily):
    name = "toyeval"
    label = "Toy with eval: the toy family plus fake follow-up commands (wizard tests)"
    wizard = None  # not in the model list: only its runs' dashboards use it
    commands = (
        CliCommand("eval", "evaluate a run's adapter (fake)", eval_arguments, "tests.wizard.eval_plugin:cmd_eval"),
        CliCommand("predict", "label a scene folder with scene.txt (fake)", predict_arguments,
                   "tests.wizard.eval_plugin:cmd_predict"),
    )
