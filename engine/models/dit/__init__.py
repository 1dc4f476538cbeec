"""Provides the TripoSG / MIDI-3D models: the DiT, its attention processors and the rectified-flow scheduler."""

from engine.models.dit.attention import MultiInstanceAttnProcessor, TripoSGAttention, TripoSGAttnProcessor
from engine.models.dit.conditioning import (
    ImagePreprocessor,
    build_dinov2_input,
    encode_clip_image,
    encode_dinov2_image,
    load_clip_image_encoder,
    load_dinov2_image_encoder,
    load_image_preprocessor,
    split_instances,
    widen_dinov2_patch_embed,
)
from engine.models.dit.flow import (
    RectifiedFlowScheduler,
    RectifiedFlowSchedulerOutput,
    add_noise,
    flow_target,
    sample_logit_normal_sigmas,
)
from engine.models.dit.fps import farthest_point_sampling, sample_query_indices
from engine.models.dit.mesh import extract_mesh, mesh_sdf
from engine.models.dit.pipeline import Pipeline, build_tiny_pipeline, load_pipeline
from engine.models.dit.transformer import DiTBlock, TripoSGDiTModel, TripoSGDiTOutput
from engine.models.dit.vae import DiagonalGaussian, TripoSGVAEModel

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
    "ImagePreprocessor",
    "build_dinov2_input",
    "encode_clip_image",
    "encode_dinov2_image",
    "load_clip_image_encoder",
    "load_dinov2_image_encoder",
    "load_image_preprocessor",
    "split_instances",
    "widen_dinov2_patch_embed",
    "farthest_point_sampling",
    "sample_query_indices",
    "extract_mesh",
    "mesh_sdf",
    "Pipeline",
    "build_tiny_pipeline",
    "load_pipeline",
    "DiagonalGaussian",
    "TripoSGVAEModel",
]
