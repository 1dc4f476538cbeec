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
Messages name this script's flags: where `lora3d train` would say `--set train.mixed_precision=no` or
`--out NEW_DIR`, this script says `--mixed_precision no` and `--output_dir NEW_DIR` (`translate_message`).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path
from typing import TextIO

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


FLAG_MAP = (
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
    ("num_epochs", "train.epochs"),
    ("max_steps", "train.max_steps"),
)
"""This script's value flags and the profile keys they set."""
_KEY_TO_FLAG = {key: f"--{attr}" for attr, key in FLAG_MAP}
_PAIR = r"[A-Za-z_][\w.]*=[^\s`,;)]+"
_SET_RUN = re.compile(rf"--set((?:\s+{_PAIR})+)")
_BARE_PAIR = re.compile(rf"`({_PAIR})`")
_OUT = re.compile(r"--out\b(?![-\w])")


def _pair_words(pair: str) -> tuple[str | None, str]:
    """(`--flag value`, None) for a key this script has a flag for, else (None, `KEY=VALUE`)."""
    key, _, value = pair.partition("=")
    if key == "train.gradient_checkpointing" and value.lower() == "true":
        return "--gradient_checkpointing", ""
    if key in _KEY_TO_FLAG:
        return f"{_KEY_TO_FLAG[key]} {value}", ""
    return None, pair


def translate_message(text: str) -> str:
    """A `lora3d train` message in this script's words: its flags for `--set KEY=VALUE` and `--out`.

    `--set a=1 b=2` becomes `--flag_a 1` for keys with a flag here and `--options b=2` for the rest; a
    backquoted `KEY=VALUE` with a flag becomes that flag; `--out` becomes `--output_dir`.
    """

    def set_run(match: re.Match[str]) -> str:
        flags, options = [], []
        for pair in match[1].split():
            flag, rest = _pair_words(pair)
            (flags if flag else options).append(flag or rest)
        return " ".join(flags + (["--options " + " ".join(options)] if options else []))

    def bare(match: re.Match[str]) -> str:
        flag, _ = _pair_words(match[1])
        return f"`{flag}`" if flag else match[0]

    text = _SET_RUN.sub(set_run, text)
    text = _BARE_PAIR.sub(bare, text)
    return _OUT.sub("--output_dir", text)


class _Translating(io.TextIOBase):
    """A text stream that passes each finished line through `translate_message` to the stream it wraps."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._stream.write(translate_message(done + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._stream.write(translate_message(self._pending))
            self._pending = ""
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


def build_cli_args(args: argparse.Namespace) -> list[str]:
    """The `lora3d` argument list equivalent to the parsed script arguments."""
    profile = args.config_file or args.config or str(DEFAULT_PROFILE)
    sets = list(args.options)
    flag_map = [(attr, key) for attr, key in FLAG_MAP if attr not in ("num_epochs", "max_steps")]
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

    # Every message (errors, warnings, notes) names this script's flags, not `lora3d train`'s.
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Translating(out), _Translating(err)
    try:
        return cli_main(build_cli_args(args))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = out, err


if __name__ == "__main__":
    sys.exit(main())
