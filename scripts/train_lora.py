#!/usr/bin/env python
"""Provides the seeds' training command lines, mapped onto `lora3d train PROFILE --set ...`.

SceneSplat / Pointcept style (the PointLoRA integration guide):

    python scripts/train_lora.py --config-file profiles/scenesplat/semseg_16gb.yaml \
        --options save_path=exp_runs/x lora.r=8 lora.preset=minimal \
                  lora_training.pretrained_path=checkpoints/pretrained.pth

`--options` keys are profile keys; the Pointcept names in `engine.profile.load.OPTION_ALIASES`
(`save_path`, `lora_training.pretrained_path`, `lora.lora_alpha`, `batch_size`, ...) are mapped.
An unknown key is an error (exit 2) that names the closest valid key.

MIDI-3D style (the LoRA fine-tuning setup):

    python scripts/train_lora.py --data_dir data/training_data --output_dir outputs/lora_finetune \
        --batch_size 4 --num_epochs 100 --learning_rate 1e-4 --lora_rank 16 [--config PROFILE]

maps to `data.root`, `output.dir`, `train.batch_size`, `train.epochs` (and `train.max_steps: null`),
`train.lr`, `lora.r` and `lora.alpha` (= the rank unless `--lora_alpha` is given); the profile
defaults to `profiles/midi/lora_finetune.yaml`.

Exit codes are the CLI's: 0 done, 1 failed, 2 a profile, data or checkpoint problem (one message).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # Runs from a clone without `pip install`.
    sys.path.insert(0, str(REPO))

DEFAULT_PROFILE = REPO / "profiles" / "midi" / "lora_finetune.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_lora.py",
        description="Train a LoRA adapter (wraps `lora3d train`). SceneSplat: --config-file PROFILE --options k=v ...; "
        "MIDI: --data_dir D --output_dir O --batch_size N --num_epochs E --learning_rate LR --lora_rank R.",
    )
    scenesplat = parser.add_argument_group("SceneSplat / Pointcept command line")
    scenesplat.add_argument("--config-file", "--config_file", dest="config_file", help="profile YAML (Pointcept's config)")
    scenesplat.add_argument("--options", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                            help="profile overrides, e.g. save_path=exp_runs/x lora.r=8 lora.preset=minimal")
    scenesplat.add_argument("--num-gpus", "--num_gpus", dest="num_gpus", type=int,
                            help="processes on this machine (sets launch.num_processes; use `accelerate launch`)")
    midi = parser.add_argument_group("MIDI-3D command line")
    midi.add_argument("--config", help=f"profile YAML (default {DEFAULT_PROFILE.relative_to(REPO)})")
    midi.add_argument("--data_dir", "--data-dir", help="prepared data folder (data.root)")
    midi.add_argument("--output_dir", "--output-dir", help="run directory (output.dir)")
    midi.add_argument("--batch_size", "--batch-size", type=int, help="micro-batch per process (train.batch_size)")
    midi.add_argument("--num_epochs", "--num-epochs", type=int, help="epochs (train.epochs; clears train.max_steps)")
    midi.add_argument("--max_steps", "--max-steps", type=int, help="optimizer steps (train.max_steps)")
    midi.add_argument("--learning_rate", "--learning-rate", type=float, help="peak learning rate (train.lr)")
    midi.add_argument("--lora_rank", "--lora-rank", type=int, help="LoRA rank (lora.r; lora.alpha follows)")
    midi.add_argument("--lora_alpha", "--lora-alpha", type=float, help="LoRA alpha (lora.alpha)")
    midi.add_argument("--lora_dropout", "--lora-dropout", type=float, help="LoRA dropout (lora.dropout)")
    midi.add_argument("--gradient_accumulation_steps", "--gradient-accumulation-steps", type=int,
                      help="micro-batches per step (train.grad_accum)")
    midi.add_argument("--mixed_precision", "--mixed-precision", choices=["no", "bf16", "fp16"],
                      help="train.mixed_precision")
    midi.add_argument("--gradient_checkpointing", "--gradient-checkpointing", action="store_true",
                      help="train.gradient_checkpointing")
    midi.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="validate and print the resolved profile only")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    return parser


def build_cli_args(args: argparse.Namespace) -> list[str]:
    """The `lora3d` argument list equivalent to the parsed script arguments."""
    profile = args.config_file or args.config or str(DEFAULT_PROFILE)
    sets = list(args.options)
    flag_map = (
        ("data_dir", "data.root"),
        ("output_dir", "output.dir"),
        ("batch_size", "train.batch_size"),
        ("learning_rate", "train.lr"),
        ("lora_rank", "lora.r"),
        ("lora_alpha", "lora.alpha"),
        ("lora_dropout", "lora.dropout"),
        ("gradient_accumulation_steps", "train.grad_accum"),
        ("mixed_precision", "train.mixed_precision"),
        ("seed", "train.seed"),
        ("num_gpus", "launch.num_processes"),
    )
    for attr, key in flag_map:
        value = getattr(args, attr)
        if value is not None:
            sets.append(f"{key}={value}")
    if args.lora_rank is not None and args.lora_alpha is None:
        sets.append(f"lora.alpha={args.lora_rank}")
    if args.num_epochs is not None:
        sets.append(f"train.epochs={args.num_epochs}")
        if args.max_steps is None:
            sets.append("train.max_steps=null")
    if args.max_steps is not None:
        sets.append(f"train.max_steps={args.max_steps}")
    if args.gradient_checkpointing:
        sets.append("train.gradient_checkpointing=true")
    argv = ["train", profile]
    if sets:
        argv += ["--set", *sets]
    for flag in ("resume", "dry_run", "quiet"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config_file and args.config:
        parser.error("give the profile once: --config-file (SceneSplat) or --config (MIDI), not both")
    from engine.cli import main as cli_main

    return cli_main(build_cli_args(args))


if __name__ == "__main__":
    sys.exit(main())
