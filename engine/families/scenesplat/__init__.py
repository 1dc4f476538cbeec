"""Provides the SceneSplat family plugin: PTv3 over 3D Gaussian splats (semantic segmentation, language features).

The public names are loaded on first use (PEP 562), so importing a light submodule such as `data`
does not pull in the model and PEFT.
"""

from __future__ import annotations

from engine.families.entry import CliCommand, FamilyEntry
from engine.families.scenesplat.commands import eval_arguments, import_3dgs_arguments, predict_arguments
from engine.lazy_exports import lazy_exports

ENTRY = FamilyEntry(
    name="scenesplat",
    label="SceneSplat: Point Transformer V3 (PT-v3m1) over 3D Gaussian splats",
    family="engine.families.scenesplat.family:SceneSplatFamily",
    commands=(
        CliCommand("import-3dgs", "convert INRIA 3DGS .ply file(s) into SceneSplat scene folder(s)",
                   import_3dgs_arguments, "engine.families.scenesplat.commands:cmd_import_3dgs"),
        CliCommand("eval", "evaluate a run's base and adapters: full-scene mIoU/mAcc/allAcc, per-class table",
                   eval_arguments, "engine.families.scenesplat.commands:cmd_eval"),
        CliCommand("predict", "label new scenes (folders or 3DGS .ply): .npy, recoloured .ply, PNG renders",
                   predict_arguments, "engine.families.scenesplat.commands:cmd_predict"),
    ),
    demo="engine.families.scenesplat.demo:run_demo",
    merged_formats="""\
  scenesplat .pth (default)  {"epoch", "state_dict"}: Pointcept / SceneSplat tester (`weight=`),
                             lora3d `model.pretrained`, model.load_state_dict(torch.load(f)["state_dict"])
  scenesplat .pth --bare     the state dict alone: model.load_state_dict(torch.load(f, weights_only=True))
  scenesplat .safetensors    the state dict alone: safetensors.torch.load_file(f), `model.pretrained`
""",
)

_EXPORTS = {
    "SceneSplatFamily": "family",
    "SceneSplatModelOptions": "options",
    "SceneSplatDataOptions": "options",
    "SceneSplatLoraOptions": "options",
    "SyntheticRoomDataset": "datasets",
    "BACKBONES": "options",
    "DEMO_TINY_CONFIG": "options",
    "HEAD_FILE": "adapters",
    "load_adapter": "adapters",
    "language_view": "adapters",
    "model_inputs": "task",
    "SemsegTask": "task",
    "LangTask": "task",
    "semseg_loss": "task",
    "lang_loss": "task",
    "aggregated_contrastive_loss": "task",
    "confusion_matrix": "task",
    "segmentation_metrics": "task",
    "zero_shot_predict": "task",
    "run_demo": "demo",
    "ensure_demo_base": "demo",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
