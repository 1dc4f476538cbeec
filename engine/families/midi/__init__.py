"""Provides the MIDI-3D family plugin: data preparation, latent cache, flow-matching LoRA training, inference."""

from engine.families.midi.family import MidiDataOptions, MidiFamily, MidiModelOptions

__all__ = ["MidiDataOptions", "MidiFamily", "MidiModelOptions"]
