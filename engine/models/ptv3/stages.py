"""Provides the stage plumbing both PT-v3 versions build their backbone from.

PT-v3m1 (engine.models.ptv3.model) and PT-v3m2 (engine.models.sonata.model) share Pointcept's
constructor checks, per-stage argument tuples, linear drop-path schedule, block numbering (block i of a
stage reads order i % len(order), CPE indice key `stage{s}`), the decoder patch-size warning and the
gradient-checkpointing switch. Their blocks, embeddings and pooling differ and stay in their own modules.
None of this registers parameters, so state-dict names are unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from engine.errors import ProfileError
from engine.models.ptv3.point import Point
from engine.models.ptv3.serialization import SERIALIZATION_ORDERS


class Stage(nn.Module):
    """An encoder stage (`down` then `block{i}`) or decoder stage (`up` then `block{i}`)."""

    def forward(self, point: Point) -> Point:
        for module in self.children():
            point = module(point)
        return point


def as_tuple(value: Any, n: int, name: str) -> tuple:
    """`value` as an n-tuple (one entry per stage); a scalar becomes a 1-tuple, so n must then be 1."""
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    if len(values) != n:
        raise ProfileError(f"{name}: needs {n} entries (one per stage), got {list(values)!r}. "
                           f"Give {n} values.")
    return values


def check_orders(order: str | Sequence[str]) -> tuple[str, ...]:
    """The serialization orders as a tuple, each one known."""
    orders = (order,) if isinstance(order, str) else tuple(order)
    for name in orders:
        if name not in SERIALIZATION_ORDERS:
            raise ProfileError(f"order: unknown serialization order, got {name!r}. "
                               f"Use entries of {SERIALIZATION_ORDERS}.")
    return orders


def check_flash(enable_flash: bool, enable_rpe: bool, upcast_attention: bool, upcast_softmax: bool) -> None:
    """Refuses flash attention together with the options only the SDPA path has."""
    if enable_flash and (enable_rpe or upcast_attention or upcast_softmax):
        raise ProfileError("enable_flash: flash attention cannot use enable_rpe/upcast_attention/"
                           f"upcast_softmax, got enable_flash={enable_flash!r}. Set enable_flash=False "
                           "or turn the other options off.")


def drop_path_rates(drop_path: float, depths: Sequence[int]) -> list[list[float]]:
    """Pointcept's schedule: drop path rising linearly from 0 to `drop_path` over all blocks, per stage."""
    rates = torch.linspace(0, drop_path, sum(depths), device="cpu").tolist()
    return [rates[sum(depths[:s]) : sum(depths[: s + 1])] for s in range(len(depths))]


def decoder_args(
    n_dec: int,
    dec_depths: Sequence[int],
    dec_channels: Sequence[int],
    dec_num_head: Sequence[int],
    dec_patch_size: Sequence[int],
    enc_channels: tuple,
    enc_patch_size: tuple,
) -> tuple[tuple, tuple, tuple, tuple]:
    """The decoder's per-stage tuples (channels get the deepest encoder width appended), with a warning
    where `dec_patch_size` differs from the encoder's: as in Pointcept the decoder reuses its patch plan."""
    dec_depths = as_tuple(dec_depths, n_dec, "dec_depths")
    dec_channels = as_tuple(dec_channels, n_dec, "dec_channels") + (enc_channels[-1],)
    dec_num_head = as_tuple(dec_num_head, n_dec, "dec_num_head")
    dec_patch_size = as_tuple(dec_patch_size, n_dec, "dec_patch_size")
    mismatched = [s for s in range(n_dec) if dec_patch_size[s] != enc_patch_size[s]]
    if mismatched:
        warnings.warn(
            f"dec_patch_size: differs from enc_patch_size at stages {mismatched}; as in Pointcept "
            "the decoder reuses the encoder's patch plan, so the decoder value is ignored.",
            stacklevel=3,  # the line that built the model
        )
    return dec_depths, dec_channels, dec_num_head, dec_patch_size


def add_blocks(
    stage: nn.Module,
    block: Callable[..., nn.Module],
    s: int,
    channels: int,
    num_heads: int,
    patch_size: int,
    drops: Sequence[float],
    num_orders: int,
    block_kw: dict[str, Any],
) -> None:
    """Adds `block{i}` for each rate in `drops` to stage `s`: order i % num_orders, CPE key `stage{s}`."""
    for i, rate in enumerate(drops):
        stage.add_module(f"block{i}", block(
            channels, num_heads, patch_size, drop_path=rate,
            order_index=i % num_orders, cpe_indice_key=f"stage{s}", **block_kw,
        ))


class BlockCheckpointing:
    """Hugging Face-style gradient-checkpointing switch over every module of type `block_type`.

    Mixed into an `nn.Module` backbone whose blocks have a `use_checkpoint` flag.
    """

    block_type: type[nn.Module]

    def _checkpoint_blocks(self) -> list[Any]:
        return [m for m in self.modules() if isinstance(m, self.block_type)]  # type: ignore[attr-defined]

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recomputes every block in backward (torch.utils.checkpoint, use_reentrant=False, training only).

        Args:
            gradient_checkpointing_kwargs: accepted for Hugging Face/PEFT call compatibility; ignored.
        """
        for block in self._checkpoint_blocks():
            block.use_checkpoint = True

    def gradient_checkpointing_disable(self) -> None:
        """Stores block activations again."""
        for block in self._checkpoint_blocks():
            block.use_checkpoint = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(b.use_checkpoint for b in self._checkpoint_blocks())
