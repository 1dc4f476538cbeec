"""Tests z-order and Hilbert encoders, the two depth rules and serialization orders."""

from __future__ import annotations

import pytest
import torch

from engine.errors import DataError
from engine.models.ptv3 import PointTransformerV3
from engine.models.ptv3.serialization import (
    encode_hilbert,
    encode_order,
    encode_z_order,
    serialization_depth,
    serialize,
)


def _cube(depth: int) -> torch.Tensor:
    r = torch.arange(1 << depth)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def test_z_order_bit_layout():
    # x bit i -> 3i+2, y bit i -> 3i+1, z bit i -> 3i
    g = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [5, 3, 6]])
    code = encode_z_order(g, depth=3)
    assert code[:4].tolist() == [4, 2, 1, 32]
    # 5=101, 3=011, 6=110 -> levels from top: (x1,y0,z1)(x0,y1,z1)(x1,y1,z0) = 101 011 110
    assert code[4].item() == int("101011110", 2)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_hilbert_is_a_continuous_bijection(depth):
    g = _cube(depth)
    code = encode_hilbert(g, depth)
    assert torch.equal(torch.sort(code).values, torch.arange(8**depth))
    walk = g[torch.argsort(code)]
    steps = (walk[1:] - walk[:-1]).abs().sum(1)
    assert torch.all(steps == 1), "consecutive Hilbert indices must be face neighbours"
    assert walk[0].tolist() == [0, 0, 0]


def test_hilbert_parent_cell_is_code_shifted_by_three():
    depth = 4
    g = _cube(depth)
    code = encode_hilbert(g, depth)
    # pooling relies on code >> 3 grouping the 8 children of one parent cell
    parents = torch.unique(code >> 3, return_inverse=True)[1]
    by_cell = torch.unique(g >> 1, dim=0, return_inverse=True)[1]
    pairs = torch.unique(torch.stack([parents, by_cell], 1), dim=0)
    assert pairs.shape[0] == 8 ** (depth - 1)


def test_trans_orders_swap_x_and_y():
    g = torch.randint(0, 64, (50, 3))
    batch = torch.zeros(50, dtype=torch.long)
    assert torch.equal(encode_order(g, batch, 6, "z-trans"), encode_order(g[:, [1, 0, 2]], batch, 6, "z"))
    assert torch.equal(encode_order(g, batch, 6, "hilbert-trans"), encode_order(g[:, [1, 0, 2]], batch, 6, "hilbert"))


def test_batch_index_occupies_the_top_bits():
    g = torch.tensor([[3, 3, 3], [0, 0, 0]])
    code = encode_order(g, torch.tensor([0, 1]), 2, "z")
    assert code.tolist() == [63, 1 << 6]


@pytest.mark.parametrize(
    ("grid_max", "bit_length", "max_plus_one"),
    [(99, 7, 7), (127, 7, 8), (128, 8, 8), (63, 6, 7), (1, 1, 2), (0, 0, 1)],
)
def test_depth_rules(grid_max, bit_length, max_plus_one):
    g = torch.tensor([[0, 0, 0], [grid_max, 0, 0]])
    assert serialization_depth(g, "bit_length") == bit_length
    assert serialization_depth(g, "max_plus_one") == max_plus_one


def test_depth_rule_changes_hilbert_order_at_power_of_two_minus_one():
    torch.manual_seed(1)
    g = torch.unique(torch.randint(0, 128, (300, 3)), dim=0)
    g[0] = torch.tensor([127, 127, 127])
    g = torch.unique(g, dim=0)
    batch = torch.zeros(len(g), dtype=torch.long)
    orders = ("z", "hilbert")
    _, order7, _ = serialize(g, batch, orders, serialization_depth(g, "bit_length"))
    _, order8, _ = serialize(g, batch, orders, serialization_depth(g, "max_plus_one"))
    assert torch.equal(order7[0], order8[0])  # z-order does not depend on depth
    assert not torch.equal(order7[1], order8[1])  # the Hilbert curve does

    data = dict(coord=g.float(), grid_coord=g, feat=torch.randn(len(g), 3), offset=torch.tensor([len(g)]))
    depths = {}
    for rule in ("bit_length", "max_plus_one"):
        model = PointTransformerV3(in_channels=3, order=("hilbert",), stride=(2,), enc_depths=(1, 1),
                                   enc_channels=(8, 8), enc_num_head=(1, 1), enc_patch_size=(16, 16),
                                   dec_depths=(1,), dec_channels=(8,), dec_num_head=(1,), dec_patch_size=(16,),
                                   serialization_depth_rule=rule).eval()
        with torch.no_grad():
            out = model(dict(data))
        depths[rule] = (out.serialized_depth, out.serialized_order[0])
    assert depths["bit_length"][0] == 7 and depths["max_plus_one"][0] == 8
    assert torch.equal(depths["bit_length"][1], order7[1])
    assert torch.equal(depths["max_plus_one"][1], order8[1])


def test_serialize_inverse_undoes_order():
    g = torch.unique(torch.randint(0, 32, (200, 3)), dim=0)
    batch = (torch.arange(len(g)) >= len(g) // 2).long()
    code, order, inverse = serialize(g, batch, ("z", "hilbert-trans"), 5)
    for o in range(2):
        assert torch.equal(order[o][inverse[o]], torch.arange(len(g)))
        assert torch.all(code[o][order[o]].diff() > 0)


def test_too_deep_grid_is_a_data_error():
    with pytest.raises(DataError, match="grid_coord: serialization supports at most 16 bits"):
        serialization_depth(torch.tensor([[70000, 0, 0]]))
