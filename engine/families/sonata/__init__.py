"""Provides the Sonata family plugin: Pointcept's PT-v3m2 (the Sonata and Concerto backbone), semantic segmentation.

The public names are loaded on first use (PEP 562), so importing a light submodule such as `data`
does not pull in the model and PEFT.
"""

from __future__ import annotations

from engine.families.entry import CliCommand, FamilyEntry
from engine.families.sonata.commands import export_arguments
from engine.lazy_exports import lazy_exports

ENTRY = FamilyEntry(
    name="sonata",
    label="Sonata / Concerto: Point Transformer V3 (PT-v3m2), Pointcept's LoRA fine-tuning",
    family="engine.families.sonata.family:SonataFamily",
    commands=(
        CliCommand("export-pointcept", "write a sonata run as a Pointcept DefaultLORASegmentorV2 checkpoint",
                   export_arguments, "engine.families.sonata.commands:cmd_export_pointcept"),
    ),
    demo="engine.families.sonata.demo:run_demo",
)

_EXPORTS = {
    "SonataFamily": "family",
    "SonataModelOptions": "options",
    "SonataDataOptions": "options",
    "SonataLoraOptions": "options",
    "BACKBONES": "options",
    "DEMO_TINY_CONFIG": "options",
    "PRESETS": "presets",
    "SonataSemsegTask": "task",
    "lovasz_softmax_loss": "task",
    "cross_entropy_loss": "task",
    "PointFolderDataset": "data",
    "SyntheticPointRoomDataset": "datasets",
    "build_sonata_transforms": "transforms",
    "load_adapter": "adapters",
    "export_lora_segmentor": "adapters",
    "run_demo": "demo",
    "ensure_demo_base": "demo",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
