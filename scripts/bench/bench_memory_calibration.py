"""Compares the planner's analytic estimate with measured peak memory for both families at a few sizes.

Each case runs a few real training steps in its own process (engine.memory.probe): on CUDA the device
peak (NVML, else reserved + context), on CPU the resident-set increase of the steps plus the model's
tensors. Prints one row per case with the ratio estimated / measured.

    python scripts/bench/bench_memory_calibration.py [--quick] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from engine.families.recipe import resolve_recipe
from engine.memory.probe import Candidate, probe_candidate

GIB = 1024**3


def scenesplat_profile(points: int, backbone: str = "demo-tiny") -> Any:
    return resolve_recipe({
        "schema_version": 1,
        "model": {"family": "scenesplat", "backbone": backbone, "task": "semseg"},
        "data": {"synthetic_points": points, "point_budget": points, "augment": False, "synthetic_train": 2,
                 "synthetic_val": 0},
        "train": {"device": "auto"},
    })


def midi_profile(num_tokens: int, instances: int = 4) -> Any:
    return resolve_recipe({
        "schema_version": 1,
        "model": {"family": "midi", "num_tokens": num_tokens, "num_instances_per_batch": instances},
        "data": {"synthetic_train_scenes": 2, "synthetic_val_scenes": 0},
        "train": {"device": "auto"},
    })


def cases(quick: bool) -> list[tuple[str, Any, Candidate]]:
    plain = Candidate(rank=8, micro_batch=1, gradient_checkpointing=False, precision="no")
    out = [
        ("ptv3 tiny 15k pts", scenesplat_profile(15_000), plain),
        ("ptv3 tiny 60k pts", scenesplat_profile(60_000), plain),
        ("dit tiny 4x512 tok", midi_profile(512), plain),
        ("dit tiny 4x2048 tok", midi_profile(2048), plain),
    ]
    if not quick:
        ckpt = Candidate(rank=8, micro_batch=1, gradient_checkpointing=True, precision="no")
        out += [
            ("ptv3 tiny 60k ckpt", scenesplat_profile(60_000), ckpt),
            ("ptv3 tiny 60k b2", scenesplat_profile(60_000), Candidate(8, 2, False, "no")),
            ("dit tiny 4x2048 ckpt", midi_profile(2048), ckpt),
            ("dit tiny 4x2048 bf16", midi_profile(2048), Candidate(8, 1, False, "bf16")),
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four cases (two per family)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, profile, candidate in cases(args.quick):
        m = probe_candidate(profile, candidate, device)
        rows.append({"case": name, **m.to_dict()})
        if not args.json:
            measured = f"{m.measured_bytes / 2**20:9.1f}" if m.measured_bytes else "      n/a"
            ratio = f"{m.ratio:5.2f}" if m.ratio else (m.error or "n/a")
            print(f"{name:24s} {device:4s} tokens {m.tokens or 0:7d}  est {m.estimated_bytes / 2**20:9.1f} MiB  "
                  f"measured {measured} MiB  ratio {ratio}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
