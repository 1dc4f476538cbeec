"""Tests full-scene inference: the grid-sampling inverse, fragments, chunks, and equality with the val transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.families.scenesplat.data import build_sample, collate_scenes
from engine.families.scenesplat.options import DEMO_TINY_CONFIG
from engine.families.scenesplat.scene_inference import InferenceSettings, predict_scene, spatial_chunks
from engine.families.scenesplat.synthetic import generate_room
from engine.families.scenesplat.task import model_inputs
from engine.families.scenesplat.transforms import GridSample, build_transforms
from engine.models.ptv3 import PTv3Segmentor

# Seven Gaussians in three 1 m voxels, each voxel holding two or three (hand-placed):
# voxel A (0,0,0): rows 0, 1, 6; voxel B (1,0,0): rows 2, 4; voxel C (0,1,0): rows 3, 5.
# The x and y extents are centred on 1.0 so the scene centring (CenterShift) moves the grid by whole voxels.
COORD = np.array([[0.1, 0.1, 0.1], [0.9, 0.2, 0.3], [1.9, 0.1, 0.1], [0.2, 1.9, 0.2],
                  [1.2, 0.8, 0.9], [0.3, 1.1, 0.5], [0.5, 0.5, 0.5]], dtype=np.float32)
CLASS_OF_ROW = np.array([0, 1, 2, 3, 0, 1, 2])
"""Each Gaussian's own class: the stub model reads it from the colour channel that is brightest."""
VOXEL_KEPT = np.array([0, 0, 2, 3, 2, 3, 0])
"""The Gaussian whose prediction each one takes: its voxel's lowest index (the val transforms' choice)."""


class ColourModel(nn.Module):
    """A point-wise stand-in for PTv3: logits are the first four input channels (the colours, plus opacity)."""

    def forward(self, data: dict) -> torch.Tensor:
        return data["feat"][:, :4] * 10.0


def _sample() -> dict:
    n = len(COORD)
    color = np.zeros((n, 3), dtype=np.uint8)
    opacity = np.full(n, 0.0, dtype=np.float32)
    for row, cls in enumerate(CLASS_OF_ROW):
        if cls < 3:
            color[row, cls] = 255
        else:
            opacity[row] = 1.0  # channel 3 of feat
    scene = {"coord": COORD, "color": color, "opacity": opacity, "quat": np.tile([1, 0, 0, 0], (n, 1)).astype(np.float32),
             "scale": np.full((n, 3), 0.01, np.float32), "segment": CLASS_OF_ROW.astype(np.int32)}
    return build_sample(scene, "hand")


def _labels(scores: np.ndarray) -> np.ndarray:
    return scores.argmax(1)


def test_grid_sample_inverse_maps_every_gaussian_to_its_voxels_kept_row():
    out = GridSample(1.0, mode="val", return_inverse=True)({"coord": COORD.copy()})
    assert out["coord"].tolist() == COORD[[0, 2, 3]].tolist()  # one Gaussian per voxel, input order
    assert out["inverse"].tolist() == [0, 0, 1, 2, 1, 2, 0]  # rows of the kept points 0, 2, 3


def test_every_gaussian_takes_the_prediction_of_its_voxel():
    result = predict_scene(ColourModel(), _sample(), lambda x: torch.softmax(x, 1), InferenceSettings(1.0))
    assert result.voxels == 3 and result.forwards == 1 and result.kept.tolist() == [0, 2, 3]
    np.testing.assert_array_equal(_labels(result.scores), CLASS_OF_ROW[VOXEL_KEPT])
    # rows 1, 4, 5, 6 carry their voxel's prediction, not their own class
    assert (_labels(result.scores) != CLASS_OF_ROW).sum() == 4


def test_fragments_predict_every_gaussian_from_its_own_features():
    result = predict_scene(ColourModel(), _sample(), lambda x: torch.softmax(x, 1), InferenceSettings(1.0, fragments=True))
    assert result.passes == 3  # the largest voxel holds three Gaussians
    np.testing.assert_array_equal(_labels(result.scores), CLASS_OF_ROW)


def test_chunks_partition_the_voxels_and_fit_the_limit():
    coord = np.random.default_rng(0).uniform(0, 10, (5000, 3))
    chunks = spatial_chunks(coord, 700, halo=0.5)
    owned = np.concatenate([own for own, _ in chunks])
    assert sorted(owned.tolist()) == list(range(5000))
    for own, context in chunks:
        assert len(context) <= 700 and np.isin(own, context).all()
    assert len(chunks) > 5000 // 700


def test_chunked_prediction_equals_whole_for_a_pointwise_model():
    room = build_sample(generate_room(np.random.default_rng(1), "A", 3000), "room")
    score = lambda x: torch.softmax(x, 1)  # noqa: E731
    whole = predict_scene(ColourModel(), room, score, InferenceSettings(0.05))
    chunked = predict_scene(ColourModel(), room, score, InferenceSettings(0.05, max_points=400))
    assert chunked.forwards > 3 and chunked.max_chunk <= 400 and chunked.notes
    np.testing.assert_array_equal(chunked.scores, whole.scores)


def test_one_whole_pass_feeds_the_model_what_the_validation_transforms_feed_it():
    torch.manual_seed(0)
    model = PTv3Segmentor(dict(DEMO_TINY_CONFIG), 6).eval()
    room = build_sample(generate_room(np.random.default_rng(2), "B", 1500), "room")
    result = predict_scene(model, room, lambda x: x, InferenceSettings(0.08))
    val = build_transforms("val", grid_size=0.08)(room, rng=np.random.default_rng(0))
    with torch.no_grad():
        expected = model(model_inputs(collate_scenes([val])))
    kept_rows = result.scores[result.kept]  # each kept Gaussian carries its own voxel's output
    torch.testing.assert_close(torch.from_numpy(kept_rows), expected, rtol=0, atol=0)


@pytest.mark.parametrize("rotations", [2, 4])
def test_rotations_average_views_of_a_rotation_invariant_model(rotations):
    result = predict_scene(ColourModel(), _sample(), lambda x: torch.softmax(x, 1),
                           InferenceSettings(1.0, fragments=True, rotations=rotations))
    assert result.passes >= rotations
    np.testing.assert_array_equal(_labels(result.scores), CLASS_OF_ROW)
