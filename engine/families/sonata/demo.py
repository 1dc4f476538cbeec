"""Provides the built-in Sonata demo: a tiny PT-v3m2 base pretrained on synthetic rooms A, LoRA-adapted to rooms B.

1. The base: a `demo-tiny` PT-v3m2 with the concatenated multi-level head (Concerto's `enc_mode`), every
   parameter trained on domain A by the engine's Trainer (`lora.method: full`), saved as Pointcept's
   trainer does (`{"epoch", "state_dict"}`, `weights_only=True` loads it) under `$LORA3D_CACHE`, keyed by a
   hash of its settings (a recipe prerequisite, `SonataFamily.prerequisites`).
2. The adaptation: `profiles/sonata/demo.yaml` (preset `attn+mlp`: rank 8, alpha 16, dropout 0.1) trained by
   the same Trainer on domain B, with the head; losses cross-entropy + Lovász, as Pointcept's configs.
3. The proof: base and adapted mIoU on B's validation rooms, and the trainable-parameter ratio.

The rooms are SceneSplat's synthetic rooms read as Sonata reads a scan (coord, colour, normal): domain B
recolours the classes (its floor grey like A's columns, its tables white like A's walls), so the base,
which leans on colour, mislabels B and the adapter recovers.

The runner is SceneSplat's (`SegmentationDemo`), on one CPU thread.

NOTE: a demo is the top layer: it may run the Trainer (the import contract allows `*.demo` modules to).
"""

from __future__ import annotations

from engine.families.scenesplat.demo import PROFILES, SegmentationDemo
from engine.families.sonata.adapters import load_adapter
from engine.families.sonata.family import DEMO_BASE_SETTINGS

DEMO = SegmentationDemo(
    family="sonata",
    title="Sonata demo (PT-v3m2): synthetic rooms A -> B",
    profile=PROFILES / "sonata" / "demo.yaml",
    base_settings=DEMO_BASE_SETTINGS,
    quick_base_settings={**DEMO_BASE_SETTINGS, "scenes": 6, "num_points": 1500, "grid_size": 0.07, "steps": 50},
    quick_run={"points": 1500, "grid_size": 0.07, "train": 4, "val": 3, "steps": 20},
    load_adapter=load_adapter,
    one_thread=True,
    trained="LoRA + head",
)
"""The Sonata demo; `run_demo` (the family's ENTRY) and `ensure_demo_base` are its methods."""

run_demo = DEMO.run
ensure_demo_base = DEMO.ensure_base
