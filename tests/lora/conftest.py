"""Tiny model trees for the LoRA tests: Pointcept-named PTv3 and TripoSG-named DiT stand-ins, real tiny models."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from engine.models.ptv3 import PointTransformerV3

TINY_PTV3 = dict(
    in_channels=6, stride=(2, 2, 2), enc_depths=(1, 1, 2, 1), enc_channels=(8, 16, 16, 32),
    enc_num_head=(1, 2, 2, 4), enc_patch_size=(16,) * 4, dec_depths=(1, 1, 1), dec_channels=(16, 16, 16),
    dec_num_head=(2, 2, 2), dec_patch_size=(16,) * 3, enable_flash=False, drop_path=0.0,
    shuffle_orders=False, sparse_conv_backend="torch", attention_backend="sdpa",
)

TINY_DIT = dict(num_attention_heads=2, width=8, in_channels=4, num_layers=13, cross_attention_dim=6,
                cross_attention_2_dim=5)


class _Attn(nn.Module):
    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C)
        n, c = x.shape
        q, k, v = self.qkv(x).view(n, 3, self.heads, c // self.heads).unbind(1)  # (N, H, D) each
        attn = torch.softmax(torch.einsum("nhd,mhd->hnm", q, k) / (c // self.heads) ** 0.5, dim=-1)
        return self.proj(torch.einsum("hnm,mhd->nhd", attn, v).reshape(n, c))


class _Mlp(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, 4 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.cpe = nn.ModuleList([nn.Linear(c, c), nn.LayerNorm(c)])
        self.norm1 = nn.ModuleList([nn.LayerNorm(c)])
        self.attn = _Attn(c, heads)
        self.norm2 = nn.ModuleList([nn.LayerNorm(c)])
        self.mlp = nn.ModuleList([_Mlp(c)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe[1](self.cpe[0](x))
        x = x + self.attn(self.norm1[0](x))
        return x + self.mlp[0](self.norm2[0](x))


class StandInPTv3(nn.Module):
    """A PTv3-shaped module tree with Pointcept's names; dense attention over all points (no pooling)."""

    def __init__(self, in_channels: int, enc_channels: Sequence[int], enc_depths: Sequence[int],
                 dec_channels: Sequence[int] = (), dec_depths: Sequence[int] = (), head_dim: int = 4) -> None:
        super().__init__()
        self.embedding = nn.Module()
        self.embedding.stem = nn.Linear(in_channels, enc_channels[0])
        self.enc = nn.Module()
        for s, (c, d) in enumerate(zip(enc_channels, enc_depths)):
            stage = nn.Module()
            if s > 0:
                stage.down = nn.Module()
                stage.down.proj = nn.Linear(enc_channels[s - 1], c)
            for i in range(d):
                stage.add_module(f"block{i}", _Block(c, max(1, c // head_dim)))
            self.enc.add_module(f"enc{s}", stage)
        self.has_dec = bool(dec_channels)
        if self.has_dec:
            full = (*dec_channels, enc_channels[-1])
            self.dec = nn.Module()
            for s in reversed(range(len(dec_channels))):
                stage = nn.Module()
                stage.up = nn.Module()
                stage.up.proj = nn.ModuleList([nn.Linear(full[s + 1], full[s])])
                stage.up.proj_skip = nn.ModuleList([nn.Linear(enc_channels[s], full[s])])
                for i in range(dec_depths[s]):
                    stage.add_module(f"block{i}", _Block(full[s], max(1, full[s] // head_dim)))
                self.dec.add_module(f"dec{s}", stage)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:  # (N, Cin) -> (N, C_out)
        x = self.embedding.stem(feat)
        skips = []
        for stage in self.enc.children():
            if hasattr(stage, "down"):
                x = stage.down.proj(x)
            for name, block in stage.named_children():
                if name.startswith("block"):
                    x = block(x)
            skips.append(x)
        if self.has_dec:
            for name, stage in self.dec.named_children():
                s = int(name[3:])
                x = stage.up.proj[0](x) + stage.up.proj_skip[0](skips[s])
                for child, block in stage.named_children():
                    if child.startswith("block"):
                        x = block(x)
        return x


class Wrapped(nn.Module):
    """A segmentor-like wrapper: backbone under `backbone.` plus a head."""

    def __init__(self, backbone: nn.Module, out: int, classes: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(out, classes)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(feat))


def standin_small(seed: int = 0, decoder: bool = True) -> StandInPTv3:
    """Five encoder stages (Pointcept layout) with tiny widths."""
    torch.manual_seed(seed)
    dec = dict(dec_channels=(8, 8, 16, 16), dec_depths=(1, 1, 1, 1)) if decoder else {}
    return StandInPTv3(5, (8, 8, 16, 16, 32), (1, 1, 1, 2, 1), **dec)


def tiny_ptv3(seed: int = 0, **overrides) -> PointTransformerV3:
    torch.manual_seed(seed)
    return PointTransformerV3(**{**TINY_PTV3, **overrides}).eval()


def ptv3_input(n: int = 240, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, 10, (n, 3), generator=g)
    return dict(coord=grid.float() * 0.1, grid_coord=grid, feat=torch.randn(n, TINY_PTV3["in_channels"], generator=g),
                offset=torch.tensor([n // 2, n]))


def run_ptv3(model: nn.Module, data: dict) -> torch.Tensor:
    return model({k: v.clone() for k, v in data.items()})["feat"]


def randomise_lora(model: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Give every LoRA B and prompt output layer non-zero values, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or ("lora3d_prompt" in name and ".up." in name):
                param.copy_(scale * torch.randn(param.shape, generator=g))


@pytest.fixture
def standin():
    return standin_small()


@pytest.fixture
def feats():
    return torch.randn(20, 5, generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each LoRA test single-threaded, restoring the setting after: these models are too small to gain
    from threads, and on a busy 2-core machine OpenMP's spinning made them 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
