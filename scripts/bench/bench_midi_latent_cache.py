"""Provides a benchmark of the MIDI latent cache: epoch time with cached posteriors/conditions vs encoding every step.

Usage (from the repository root):
    python scripts/bench/bench_midi_latent_cache.py            # tiny MIDI-layout model, 16 scenes, 2048 points
    python scripts/bench/bench_midi_latent_cache.py --quick    # a few seconds
    python scripts/bench/bench_midi_latent_cache.py --pretrained weights/MIDI-3D --device cuda --num_tokens 2048

Both runs take the same optimizer steps over the same scenes with the same seed; the first loss of each is
printed to show they compute the same thing. The one-time cost of filling the cache is reported separately.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

try:
    import engine  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from engine.families.midi.data import synthetic_prepared_scenes
from engine.families.midi.family import MidiFamily
from engine.families.midi.task import flow_loss
from engine.families.recipe import resolve_recipe
from engine.lora.inject import apply_lora_spec
from engine.models.dit.pipeline import build_tiny_pipeline


def _profile(pretrained: Path, data_root: Path, cache: Path, use_cache: bool, args) -> object:
    return resolve_recipe({
        "schema_version": 1,
        "model": {"family": "midi", "task": "flow", "pretrained": str(pretrained), "num_tokens": args.num_tokens,
                  "num_instances_per_batch": args.slots},
        "lora": {"r": 8},
        "data": {"root": str(data_root), "cache_dir": str(cache), "enable_latent_cache": use_cache,
                 "val_split": None},
        "train": {"batch_size": args.batch_size, "device": args.device},
    })


def _epoch(recipe, device: str) -> dict[str, float]:
    family = MidiFamily()
    model = apply_lora_spec(family.build_model(recipe), recipe.lora).to(device)
    t0 = time.perf_counter()
    train, _ = family.build_datasets(recipe)
    fill = time.perf_counter() - t0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    torch.manual_seed(0)
    micro = recipe.profile.train.batch_size
    first_loss = None
    t0 = time.perf_counter()
    for start in range(0, len(train) - micro + 1, micro):
        batch = family.collate([train[i] for i in range(start, start + micro)])
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        loss, _ = flow_loss(model, batch, recipe.profile.model.num_tokens, 0.1, 0.0, 1.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        first_loss = float(loss.detach()) if first_loss is None else first_loss
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"epoch_s": time.perf_counter() - t0, "fill_s": fill, "first_loss": first_loss, "scenes": len(train)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 scenes, 512 points, 16 tokens")
    parser.add_argument("--pretrained", help="MIDI-3D folder (default: a tiny random MIDI-layout pipeline)")
    parser.add_argument("--scenes", type=int, default=16)
    parser.add_argument("--num_samples", type=int, default=2048, help="surface points per instance")
    parser.add_argument("--num_tokens", type=int, default=64)
    parser.add_argument("--slots", type=int, default=4, help="model.num_instances_per_batch")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 suits tiny models)")
    parser.add_argument("--json", help="also write the numbers to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.scenes, args.num_samples, args.num_tokens = 4, 512, 16
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pretrained = Path(args.pretrained) if args.pretrained else build_tiny_pipeline(tmp / "base")
        train, _ = synthetic_prepared_scenes("B", args.scenes, 0, 0, 64, args.num_samples, root=tmp / "data")
        data_root = train[0].parent.parent
        results = {}
        for name, use_cache in (("on_the_fly", False), ("cached_cold", True), ("cached_warm", True)):
            results[name] = _epoch(_profile(pretrained, data_root, tmp / "cache", use_cache, args), args.device)
    speedup = results["on_the_fly"]["epoch_s"] / results["cached_warm"]["epoch_s"]
    for name, r in results.items():
        print(f"{name:12s} epoch {r['epoch_s']:7.2f}s  cache fill {r['fill_s']:6.2f}s  first loss {r['first_loss']:.6f}")
    print(f"speed-up of a training epoch with the cache: {speedup:.1f}x "
          f"({args.scenes} scenes, {args.num_samples} points, {args.num_tokens} tokens, device {args.device})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "speedup": speedup, "args": vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
