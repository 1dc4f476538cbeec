"""Provides the TripoSG / MIDI-3D models: the DiT, its attention processors and the rectified-flow scheduler."""

from engine.models.dit.attention import MultiInstanceAttnProcessor, TripoSGAttention, TripoSGAttnProcessor
from engine.models.dit.flow import (
    RectifiedFlowScheduler,
    RectifiedFlowSchedulerOutput,
    add_noise,
    flow_target,
    sample_logit_normal_sigmas,
)
from engine.models.dit.transformer import DiTBlock, TripoSGDiTModel, TripoSGDiTOutput

__all__ = [
    "DiTBlock",
    "MultiInstanceAttnProcessor",
    "RectifiedFlowScheduler",
    "RectifiedFlowSchedulerOutput",
    "TripoSGAttnProcessor",
    "TripoSGAttention",
    "TripoSGDiTModel",
    "TripoSGDiTOutput",
    "add_noise",
    "flow_target",
    "sample_logit_normal_sigmas",
]
