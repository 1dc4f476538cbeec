"""Measures the cost of the base checks an adapter load runs: weights digest and architecture fingerprint.

`load_lora_checkpoint` compares the adapter's recorded base (engine.lora.architecture) with the model it
goes into. The weights signature (digest + sketch) samples at most 64 values per tensor, so its cost follows the number of tensors,
not their size; this script times it next to a full read of every weight (one `sum` per tensor), on
SceneSplat's PT-v3m1 and on a DiT at MIDI-3D's real width with fewer blocks (`--dit-layers`).

    python scripts/bench/bench_weights_digest.py                 # SceneSplat PTv3 + 2-block DiT at width 2048
    python scripts/bench/bench_weights_digest.py --dit-layers 4 --json out.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from common import describe_machine, format_machine, time_interleaved, write_json  # noqa: E402

from engine.lora.architecture import base_fingerprint, base_weights_signature  # noqa: E402
from engine.models.dit import TripoSGDiTModel  # noqa: E402
from engine.models.ptv3 import SCENESPLAT_CONFIG, PTv3Segmentor  # noqa: E402


def _full_read(model: torch.nn.Module) -> float:
    return float(sum(float(p.detach().sum()) for p in model.parameters()))


def measure(name: str, model: torch.nn.Module, repeat: int) -> list[dict]:
    params = sum(p.numel() for p in model.parameters())
    tensors = sum(1 for _ in model.parameters())
    times = time_interleaved({
        "signature": lambda: base_weights_signature(model),
        "fingerprint": lambda: base_fingerprint(model),
        "full_read": lambda: _full_read(model),
    }, warmup=1, repeat=repeat)
    return [
        {"model": name, "params_m": round(params / 1e6, 1), "tensors": tensors, "what": what,
         "median_ms": round(t["median_s"] * 1e3, 2),
         "vs_full_read": round(t["median_s"] / times["full_read"]["median_s"], 4)}
        for what, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit-layers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = describe_machine(args.threads)
    print(format_machine(machine))
    rows = measure("SceneSplat PT-v3m1 segmentor", PTv3Segmentor(dict(SCENESPLAT_CONFIG), 20).eval(), args.repeat)
    dit = TripoSGDiTModel(width=2048, num_attention_heads=16, in_channels=64, num_layers=args.dit_layers,
                          cross_attention_dim=768, cross_attention_2_dim=1024).eval()
    rows += measure(f"MIDI DiT width 2048, {args.dit_layers} blocks", dit, args.repeat)
    print(f"{'model':<40}{'params (M)':>11}{'tensors':>9}  {'what':<12}{'median ms':>10}{'vs full read':>14}")
    for row in rows:
        print(f"{row['model']:<40}{row['params_m']:>11}{row['tensors']:>9}  {row['what']:<12}"
              f"{row['median_ms']:>10}{row['vs_full_read']:>14}")
    write_json(args.json, {"machine": machine, "rows": rows})


if __name__ == "__main__":
    main()
