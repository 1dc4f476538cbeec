"""Tests the SceneSplat memory description's sparse-conv transient and its forward-only (inference) estimate."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from engine.families.recipe import resolve_recipe
from engine.families.scenesplat.memory import conv_transient_bytes, describe_memory, inference_memory
from engine.models.ptv3 import PTv3Segmentor
from engine.models.ptv3.sparse_conv import _CPU_CHUNK_ELEMS
from tests.memory.profiles import scenesplat_profile

SMALL_BACKBONE = dict(in_channels=11, order=("z", "z-trans"), stride=(2,), enc_depths=(1, 1), enc_channels=(96, 128),
                      enc_num_head=(2, 4), enc_patch_size=(64, 64), dec_depths=(1,), dec_channels=(96,),
                      dec_num_head=(2,), dec_patch_size=(64,), mlp_ratio=4, drop_path=0.0)


def test_conv_transient_is_counted_per_device():
    points = 100_000
    cuda = describe_memory(scenesplat_profile(points, train={"device": "cuda"}))
    cpu = describe_memory(scenesplat_profile(points, train={"device": "cpu"}))
    # The widest convolution is dec0's CPE (768 channels at the full level): on CUDA its chunks hold at
    # most N x 768 elements; on CPU two cache-sized buffers, whatever the scene.
    assert cuda.fixed_bytes_per_sample - cpu.fixed_bytes_per_sample == 4 * points * 768 - 4 * 2 * _CPU_CHUNK_ELEMS
    config = dict(SMALL_BACKBONE, enc_mode=False, cls_mode=False)
    assert conv_transient_bytes(config, 10 * points, "cpu") == conv_transient_bytes(config, points, "cpu")
    assert conv_transient_bytes(config, 2 * points, "cuda") == 2 * conv_transient_bytes(config, points, "cuda")


def test_inference_memory_parts_add_up():
    profile = scenesplat_profile(16_000, train={"device": "cpu"})
    cpu = inference_memory(profile)
    cuda = inference_memory(profile, device_type="cuda")
    assert cpu["heap_retention"] > 0 and cuda["heap_retention"] == 0
    for parts in (cpu, cuda):
        assert parts["expected"] == (parts["weights"] + parts["inputs"] + parts["index"]
                                     + max(parts["activations"] + parts["heap_retention"], parts["search"]))
    # SceneSplat's 92M parameters in fp32, and dec0's MLP (768 -> 3072 channels at every point) dominating.
    assert 360e6 < cpu["weights"] < 370e6
    assert cpu["activations"] >= 4 * 16_000 * (6 * 768 + 2 * 3072)
    assert inference_memory(scenesplat_profile(32_000, train={"device": "cpu"}))["activations"] == pytest.approx(
        2 * cpu["activations"], rel=0.01)


def test_inference_activations_match_the_allocator_peak_of_a_forward():
    # A surface-like scene of ~3000 voxels; the block activations (not the neighbour search) set the peak.
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(6000, 2, generator=gen) * 40
    floor = torch.stack([u[:, 0], u[:, 1], torch.zeros(6000)], 1)
    wall = torch.stack([u[:, 0], torch.zeros(6000), u[:, 1] * 0.5], 1)
    grid = torch.unique(torch.cat([floor, wall]).floor().long(), dim=0)
    grid = grid[torch.randperm(len(grid), generator=gen)[:3000]]
    n = len(grid)
    profile = resolve_recipe({
        "schema_version": 1,
        "model": {"family": "scenesplat", "backbone": SMALL_BACKBONE, "task": "semseg"},
        "data": {"synthetic_points": n, "point_budget": n, "grid_size": 0.1},
        "train": {"device": "cpu"},
    })
    estimate = inference_memory(profile)
    model = PTv3Segmentor(dict(SMALL_BACKBONE), 13).eval()
    data = dict(coord=grid.float() * 0.1, grid_coord=grid, feat=torch.randn(n, 11), offset=torch.tensor([n]))
    with torch.no_grad(), profile_memory() as prof:
        model(data)
    live = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        live += nbytes
        peak = max(peak, live)
    predicted = estimate["activations"] + estimate["index"]
    assert estimate["activations"] > estimate["search"]
    assert predicted == pytest.approx(peak, rel=0.15), (predicted, peak)


def profile_memory():
    return profile(activities=[ProfilerActivity.CPU], profile_memory=True)
