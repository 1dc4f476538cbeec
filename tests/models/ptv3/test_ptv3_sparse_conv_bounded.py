"""Tests the chunked submanifold convolution: equal to the all-pairs formulation, bounded memory, deep-copyable."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from engine.models.ptv3 import PointTransformerV3
from engine.models.ptv3 import sparse_conv as sc


class _AllPairsReference(torch.autograd.Function):
    """The formulation before issue 17, kept here as the reference: every pair gathered at once."""

    @staticmethod
    def forward(ctx, feat, weight, nmap):
        c_out, k = weight.shape[0], weight.shape[1]
        w = weight.reshape(c_out, k**3, -1)
        out = feat @ w[:, k**3 // 2, :].t()
        gathered = feat.index_select(0, nmap.in_index)
        prod = torch.cat([gathered[s:e] @ w[:, o, :].t() for o, s, e in zip(nmap.offsets, nmap.bounds, nmap.bounds[1:])])
        out.index_add_(0, nmap.out_index, prod)
        ctx.save_for_backward(feat, weight)
        ctx.nmap = nmap
        return out

    @staticmethod
    def backward(ctx, grad_out):
        feat, weight = ctx.saved_tensors
        nmap = ctx.nmap
        c_out, k = weight.shape[0], weight.shape[1]
        w = weight.reshape(c_out, k**3, -1)
        centre = k**3 // 2
        spans = list(zip(nmap.offsets, nmap.bounds, nmap.bounds[1:]))
        grad_rows = grad_out.index_select(0, nmap.out_index)
        gathered = feat.index_select(0, nmap.in_index)
        grad_feat = grad_out @ w[:, centre, :]
        grad_feat.index_add_(0, nmap.in_index, torch.cat([grad_rows[s:e] @ w[:, o, :] for o, s, e in spans]))
        grad_w = torch.zeros_like(w)
        grad_w[:, centre, :] = grad_out.t() @ feat
        for o, s, e in spans:
            grad_w[:, o, :] = grad_rows[s:e].t() @ gathered[s:e]
        return grad_feat, grad_w.reshape(weight.shape), None


def _random_map(seed: int, scenes: tuple[int, ...], extent: int, k: int):
    gen = torch.Generator().manual_seed(seed)
    grids, batches = [], []
    for b, n in enumerate(scenes):
        cells = torch.randperm(extent**3, generator=gen)[:n]
        grids.append(torch.stack([cells // extent**2, (cells // extent) % extent, cells % extent], 1))
        batches.append(torch.full((n,), b))
    return sc.build_neighbour_map(torch.cat(batches), torch.cat(grids), k)


def _peak_allocated_bytes(fn) -> int:
    """Peak of bytes held by torch's CPU allocator while `fn` runs, above the level before it (result included)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    assert events, "the profiler recorded no allocation"
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("chunk_elems", [None, 24], ids=["default-chunks", "tiny-chunks"])
@pytest.mark.parametrize(("k", "c_in", "c_out"), [(3, 5, 7), (5, 6, 4), (3, 16, 16)])
def test_equals_the_all_pairs_formulation_forward_and_backward(monkeypatch, chunk_elems, k, c_in, c_out):
    if chunk_elems is not None:
        # A few pairs per chunk: every offset spans several chunks, including a ragged last one.
        monkeypatch.setattr(sc, "_CPU_CHUNK_ELEMS", chunk_elems)
    nmap = _random_map(k + c_in, scenes=(300, 170), extent=10, k=k)
    rows = sc._chunk_rows(nmap, c_in, c_out, torch.device("cpu"))
    widest = max(e - s for s, e in zip(nmap.bounds, nmap.bounds[1:]))
    assert (rows < widest) == (chunk_elems is not None)
    torch.manual_seed(k)
    feat = torch.randn(nmap.num_points, c_in, requires_grad=True)
    weight = torch.randn(c_out, k, k, k, c_in, requires_grad=True)
    upstream = torch.randn(nmap.num_points, c_out)

    out = sc.submanifold_conv3d(feat, weight, None, nmap)
    out.backward(upstream)
    ours = (out.detach(), feat.grad.clone(), weight.grad.clone())
    feat.grad = weight.grad = None
    ref = _AllPairsReference.apply(feat, weight, nmap)
    ref.backward(upstream)
    for got, want in zip(ours, (ref.detach(), feat.grad, weight.grad)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_input_gradient_alone_and_weight_gradient_alone(monkeypatch):
    monkeypatch.setattr(sc, "_CPU_CHUNK_ELEMS", 40)
    nmap = _random_map(3, scenes=(200,), extent=8, k=3)
    weight = torch.randn(6, 3, 3, 3, 4)
    feat = torch.randn(200, 4)
    upstream = torch.randn(200, 6)
    f = feat.clone().requires_grad_(True)
    sc.submanifold_conv3d(f, weight, None, nmap).backward(upstream)  # frozen weight (LoRA): input grad only
    w = weight.clone().requires_grad_(True)
    sc.submanifold_conv3d(feat, w, None, nmap).backward(upstream)  # first layer: weight grad only
    f_ref, w_ref = feat.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    _AllPairsReference.apply(f_ref, w_ref, nmap).backward(upstream)
    torch.testing.assert_close(f.grad, f_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, atol=1e-5, rtol=1e-5)


def test_peak_memory_of_one_call_stays_within_twice_the_output():
    # 3000 sites in a 16^3 grid: about 18 non-centre pairs per site, so all pairs at once would hold
    # ~37x the output; the chunked call may hold at most the output plus one output's worth.
    nmap = _random_map(0, scenes=(3000,), extent=16, k=3)
    n, c = nmap.num_points, 32
    assert len(nmap.out_index) > 8 * n
    torch.manual_seed(0)
    feat = torch.randn(n, c)
    weight = torch.randn(c, 3, 3, 3, c)
    output_bytes = n * c * 4
    with torch.no_grad():
        forward_peak = _peak_allocated_bytes(lambda: sc.submanifold_conv3d(feat, weight, None, nmap))
    reference_peak = _peak_allocated_bytes(lambda: _AllPairsReference.apply(feat, weight, nmap))
    assert output_bytes <= forward_peak <= 2 * output_bytes
    assert reference_peak > 8 * output_bytes  # the measurement sees the all-pairs buffers

    f, w = feat.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    out = sc.submanifold_conv3d(f, w, None, nmap)
    upstream = torch.randn(n, c)
    backward_peak = _peak_allocated_bytes(lambda: out.backward(upstream))
    # The input gradient (N x C_in) and the weight gradient it returns, plus the bounded chunks.
    assert backward_peak <= 2 * output_bytes + w.numel() * 4


def test_chunks_stay_within_one_output_on_every_device():
    nmap = _random_map(1, scenes=(500,), extent=10, k=3)
    for device in ("cpu", "cuda"):  # only the chunk arithmetic: no CUDA tensor is made
        for c_in, c_out in ((6, 32), (64, 64), (768, 256)):
            rows = sc._chunk_rows(nmap, c_in, c_out, torch.device(device))
            assert rows >= 1 and rows * (c_in + c_out) <= nmap.num_points * min(c_in, c_out)


def _fake_spconv_module() -> types.ModuleType:
    """A real module object, as `import spconv.pytorch` returns (module objects cannot be deep-copied)."""

    class SparseConvTensor:
        def __init__(self, features, indices, spatial_shape, batch_size, indice_dict=None):
            self.features, self.indices, self.indice_dict = features, indices, indice_dict or {}

        def replace_feature(self, features):
            return SparseConvTensor(features, self.indices, None, None, self.indice_dict)

    class SubMConv3d(torch.nn.Module):
        def __init__(self, c_in, c_out, k, bias=True, indice_key=None):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(c_out, k, k, k, c_in))
            self.bias = torch.nn.Parameter(torch.zeros(c_out)) if bias else None
            self.indice_key = indice_key

        def forward(self, x):
            if self.indice_key not in x.indice_dict:
                idx = x.indices.long()
                x.indice_dict[self.indice_key] = sc.build_neighbour_map(idx[:, 0], idx[:, 1:], self.weight.shape[1])
            out = sc.submanifold_conv3d(x.features, self.weight, self.bias, x.indice_dict[self.indice_key])
            return x.replace_feature(out)

    module = types.ModuleType("spconv.pytorch")
    module.SparseConvTensor = SparseConvTensor
    module.SubMConv3d = SubMConv3d
    return module


@pytest.mark.parametrize("backend", ["auto", "spconv"])
def test_model_deep_copies_while_spconv_is_importable(monkeypatch, backend):
    monkeypatch.setattr(sc, "_import_spconv", _fake_spconv_module)
    monkeypatch.setattr(sc.SpconvSparseConvBackend, "_check_device", staticmethod(lambda feat: None))
    cfg = dict(in_channels=4, order=("z",), stride=(2,), enc_depths=(1, 1), enc_channels=(8, 16), enc_num_head=(1, 2),
               enc_patch_size=(16, 16), dec_depths=(1,), dec_channels=(8,), dec_num_head=(1,), dec_patch_size=(16,),
               drop_path=0.0, sparse_conv_backend=backend)
    model = PointTransformerV3(**cfg).eval()
    gen = torch.Generator().manual_seed(2)
    cells = torch.randperm(512, generator=gen)[:90]
    grid = torch.stack([cells // 64, (cells // 8) % 8, cells % 8], 1)
    data = dict(coord=grid.float(), grid_coord=grid, feat=torch.randn(90, 4), offset=torch.tensor([90]))
    twin = copy.deepcopy(model)  # before any forward
    with torch.no_grad():
        model(dict(data))  # the spconv path (when chosen) now holds its spconv module per conv
        clone = copy.deepcopy(model)
        torch.testing.assert_close(clone(dict(data)).feat, model(dict(data)).feat)
        torch.testing.assert_close(twin(dict(data)).feat, model(dict(data)).feat)
    assert clone.enc.enc0.block0.cpe[0].weight is not model.enc.enc0.block0.cpe[0].weight
