"""Tests the pure-torch submanifold convolution against a dense F.conv3d, its gradients and map caching."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.errors import HardwareError
from engine.models.ptv3 import PointTransformerV3
from engine.models.ptv3 import sparse_conv as sc


def _sites(seed: int, scenes: tuple[int, ...] = (120, 80), extent: int = 9):
    gen = torch.Generator().manual_seed(seed)
    grids, batches = [], []
    for b, n in enumerate(scenes):
        cells = torch.randperm(extent**3, generator=gen)[:n]
        grids.append(torch.stack([cells // extent**2, (cells // extent) % extent, cells % extent], 1))
        batches.append(torch.full((n,), b))
    return torch.cat(batches), torch.cat(grids)


def _dense_reference(feat, weight, bias, batch, grid):
    """F.conv3d on a zero-filled grid per scene, read back at the active sites (float64)."""
    k = weight.shape[1]
    size = int(grid.max()) + 1
    out = torch.zeros(feat.shape[0], weight.shape[0], dtype=torch.float64)
    w = weight.double().permute(0, 4, 1, 2, 3)  # KRSC -> (out, in, kx, ky, kz)
    for b in batch.unique():
        rows = batch == b
        g = grid[rows]
        dense = torch.zeros(1, feat.shape[1], size, size, size, dtype=torch.float64)
        dense[0, :, g[:, 0], g[:, 1], g[:, 2]] = feat[rows].double().t()
        y = F.conv3d(dense, w, None if bias is None else bias.double(), padding=k // 2)
        out[rows] = y[0, :, g[:, 0], g[:, 1], g[:, 2]].t()
    return out


def _force_searchsorted(monkeypatch):
    monkeypatch.setattr(sc, "_DENSE_TABLE_MAX", 0)
    monkeypatch.setattr(sc, "_DENSE_CELLS_PER_QUERY", 0)


@pytest.mark.parametrize("dense_table", [True, False], ids=["dense-table", "searchsorted"])
@pytest.mark.parametrize(("k", "c_in", "c_out", "bias"), [(3, 4, 5, True), (5, 3, 6, False), (3, 8, 8, False)])
def test_matches_dense_conv3d(monkeypatch, dense_table, k, c_in, c_out, bias):
    if not dense_table:
        _force_searchsorted(monkeypatch)
    torch.manual_seed(k * 10 + c_in)
    batch, grid = _sites(k)
    feat = torch.randn(len(grid), c_in)
    conv = sc.SubMConv3d(c_in, c_out, k, bias=bias)
    with torch.no_grad():
        if bias:
            conv.bias.normal_()
        out = sc.submanifold_conv3d(feat, conv.weight, conv.bias, sc.build_neighbour_map(batch, grid, k))
    ref = _dense_reference(feat, conv.weight, conv.bias, batch, grid)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_both_lookup_paths_give_identical_maps(monkeypatch):
    batch, grid = _sites(7, scenes=(150, 60), extent=8)
    dense = sc.build_neighbour_map(batch, grid, 5)
    _force_searchsorted(monkeypatch)
    sparse = sc.build_neighbour_map(batch, grid, 5)
    assert dense.offsets == sparse.offsets and dense.bounds == sparse.bounds
    assert torch.equal(dense.out_index, sparse.out_index) and torch.equal(dense.in_index, sparse.in_index)
    assert len(dense.out_index) > 0


def test_gradients_match_dense_autograd():
    torch.manual_seed(0)
    batch, grid = _sites(3, scenes=(60, 40), extent=6)
    feat = torch.randn(len(grid), 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    nmap = sc.build_neighbour_map(batch, grid, 3)
    upstream = torch.randn(len(grid), 4, dtype=torch.float64)
    (sc.submanifold_conv3d(feat, weight, None, nmap) * upstream).sum().backward()
    ours = (feat.grad.clone(), weight.grad.clone())
    feat.grad = weight.grad = None
    (_dense_reference(feat, weight, None, batch, grid) * upstream).sum().backward()
    torch.testing.assert_close(ours[0], feat.grad)
    torch.testing.assert_close(ours[1], weight.grad)


def test_scenes_do_not_see_each_other():
    # Two scenes with identical coordinates: each output must only use its own scene's features.
    grid = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 1]])
    batch = torch.tensor([0, 0, 1, 1])
    feat = torch.tensor([[1.0], [2.0], [10.0], [20.0]])
    weight = torch.ones(1, 3, 3, 3, 1)
    out = sc.submanifold_conv3d(feat, weight, None, sc.build_neighbour_map(batch, grid, 3))
    assert out.squeeze(1).tolist() == [3.0, 3.0, 30.0, 30.0]


def test_neighbour_map_built_once_per_level_and_kernel(monkeypatch):
    calls = []
    real = sc.build_neighbour_map

    def counting(batch, grid, k):
        calls.append((len(grid), k))
        return real(batch, grid, k)

    monkeypatch.setattr(sc, "build_neighbour_map", counting)
    model = PointTransformerV3(in_channels=4, order=("z", "hilbert"), stride=(2,), enc_depths=(2, 3),
                               enc_channels=(8, 16), enc_num_head=(1, 2), enc_patch_size=(16, 16),
                               dec_depths=(2,), dec_channels=(8,), dec_num_head=(1,), dec_patch_size=(16,),
                               sparse_conv_backend="torch").eval()
    batch, grid = _sites(1, scenes=(100,), extent=8)
    with torch.no_grad():
        model(dict(coord=grid.float(), grid_coord=grid, feat=torch.randn(100, 4), offset=torch.tensor([100])))
    # stem (k=5) and stage0 (k=3) at level 0 (shared by enc0 and dec0), stage1 at level 1: 7 convs, 3 maps
    assert sorted(k for _, k in calls) == [3, 3, 5]


def test_spconv_backend_requested_without_spconv_fails_at_construction():
    if sc._import_spconv() is not None:
        pytest.skip("spconv is installed here")
    with pytest.raises(HardwareError, match="sparse_conv_backend: `spconv` was requested but is not importable"):
        PointTransformerV3(sparse_conv_backend="spconv")


def test_auto_backend_uses_torch_on_cpu():
    backend = sc.build_sparse_conv_backend("auto")
    batch, grid = _sites(2, scenes=(30,), extent=5)
    conv = sc.SubMConv3d(2, 3, 3, backend=backend)
    level = {"batch": batch, "grid_coord": grid}
    out = conv(torch.randn(30, 2), level)
    assert out.shape == (30, 3) and 3 in level["_neighbour_maps"]


class _FakeSparseConvTensor:
    """Stands in for spconv.SparseConvTensor: features, indices and a shared indice_dict."""

    def __init__(self, features, indices, spatial_shape, batch_size, indice_dict=None):
        self.features, self.indices = features, indices
        self.spatial_shape, self.batch_size = spatial_shape, batch_size
        self.indice_dict = {} if indice_dict is None else indice_dict

    def replace_feature(self, features):
        return _FakeSparseConvTensor(features, self.indices, self.spatial_shape, self.batch_size, self.indice_dict)


class _FakeSubMConv3d(torch.nn.Module):
    """Stands in for spconv.SubMConv3d: KRSC weight, maps cached in indice_dict under indice_key."""

    builds = 0

    def __init__(self, c_in, c_out, k, bias=True, indice_key=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(c_out, k, k, k, c_in))
        self.bias = torch.nn.Parameter(torch.zeros(c_out)) if bias else None
        self.indice_key = indice_key

    def forward(self, x):
        if self.indice_key not in x.indice_dict:
            _FakeSubMConv3d.builds += 1
            idx = x.indices.long()
            x.indice_dict[self.indice_key] = sc.build_neighbour_map(idx[:, 0], idx[:, 1:], self.weight.shape[1])
        out = sc.submanifold_conv3d(x.features, self.weight, self.bias, x.indice_dict[self.indice_key])
        return x.replace_feature(out)


def test_spconv_backend_wiring_with_a_stand_in(monkeypatch):
    """Checks parameter sharing, indice-key reuse and outputs of the spconv path (no CUDA needed)."""
    fake = type("spconv", (), {"SparseConvTensor": _FakeSparseConvTensor, "SubMConv3d": _FakeSubMConv3d})
    monkeypatch.setattr(sc, "_import_spconv", lambda: fake)
    monkeypatch.setattr(sc.SpconvSparseConvBackend, "_check_device", staticmethod(lambda feat: None))
    _FakeSubMConv3d.builds = 0
    cfg = dict(in_channels=4, order=("z", "hilbert"), stride=(2,), enc_depths=(2, 2), enc_channels=(8, 16),
               enc_num_head=(1, 2), enc_patch_size=(16, 16), dec_depths=(2,), dec_channels=(8,), dec_num_head=(1,),
               dec_patch_size=(16,), drop_path=0.0)
    torch.manual_seed(0)
    ref = PointTransformerV3(**cfg, sparse_conv_backend="torch").eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model = PointTransformerV3(**cfg, sparse_conv_backend="spconv").eval()
    model.load_state_dict(ref.state_dict())
    batch, grid = _sites(4, scenes=(100, 70), extent=8)
    data = dict(coord=grid.float(), grid_coord=grid, feat=torch.randn(170, 4), offset=torch.tensor([100, 170]))
    with torch.no_grad():
        torch.testing.assert_close(model(dict(data)).feat, ref(dict(data)).feat, atol=1e-5, rtol=1e-5)
    assert _FakeSubMConv3d.builds == 3  # "stem" and "stage0" at level 0, "stage1" at level 1
    conv = model.enc.enc0.block0.cpe[0]
    assert conv.__dict__["_spconv_impl"].weight is conv.weight
    assert "_spconv_impl" not in str(list(model.state_dict()))
