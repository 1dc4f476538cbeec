"""Provides the MIDI-3D family plugin: data preparation, latent cache, flow-matching LoRA training, inference.

The public names load on first use (PEP 562): data-preparation workers import `prepare` alone, without
diffusers and the models.
"""

from __future__ import annotations

from engine.families.entry import CliCommand, FamilyEntry
from engine.families.midi.commands import infer_arguments, prepare_mesh_arguments
from engine.lazy_exports import lazy_exports

ENTRY = FamilyEntry(
    name="midi",
    label="MIDI-3D: rectified-flow DiT (TripoSG) for multi-instance 3D scenes",
    family="engine.families.midi.family:MidiFamily",
    commands=(
        CliCommand("prepare-mesh", "turn folders of meshes (OBJ, GLB/glTF, PLY, STL, OFF, DAE, 3MF) into MIDI training data", prepare_mesh_arguments,
                   "engine.families.midi.commands:cmd_prepare_mesh"),
        CliCommand("infer", "generate a 3D scene (GLB/OBJ/PLY) from an image and a segmentation", infer_arguments,
                   "engine.families.midi.commands:cmd_infer"),
    ),
    demo="engine.families.midi.demo:run_demo",
    merged_formats="""\
  midi folder                diffusers transformer/: TripoSGDiTModel.from_pretrained(folder), infer --lora_path
  midi .safetensors          the transformer's state dict: load_file(f) into transformer, infer --lora_path
  midi .pth                  the transformer's state dict: transformer.load_state_dict(torch.load(f))
""",
)

_EXPORTS = {"MidiDataOptions": "options", "MidiFamily": "family", "MidiModelOptions": "options",
            "MidiLoraOptions": "options", "FlowTask": "task"}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
