"""Provides loading of Sonata/Concerto (PT-v3m2) checkpoints and export to Pointcept's segmentor layout.

Key layouts read (each optionally under DDP's `module.` and inside `{"state_dict": ...}`):
- pretraining (Sonata/Concerto `CheckpointSaver` files): the backbone under `student.backbone.`; the
  teacher and the pretraining heads are skipped, as Pointcept's `backbone_load` does;
- `DefaultLORASegmentorV2` training checkpoints: PEFT wraps `backbone.enc`, so every encoder key is
  `backbone.enc.base_model.model.<key>` and adapted linears hold `base_layer`, `lora_A.<name>`, `lora_B.<name>`;
- segmentor (`DefaultSegmentorV2`): `backbone.<key>` and `seg_head.*`;
- a bare backbone state dict (`embedding.*`, `enc.*`, `dec.*`), e.g. the standalone Sonata release.
Keys are matched by name with lora3d's in-place PEFT layers folded out, so plain weights load into a
model with LoRA injected and the other way round is refused with the call that fixes it. Files are read
with `torch.load(weights_only=True)` or safetensors only (engine.models.ptv3.checkpoint).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine.errors import CheckpointError
from engine.models.ptv3.checkpoint import LoadReport, read_state_dict

PRETRAIN_PREFIX = "student.backbone."
PEFT_ENC_PREFIX = "backbone.enc.base_model.model."
LAYOUTS = ("pretraining", "lora_segmentor", "segmentor", "backbone", "prefix")
_BACKBONE_ROOTS = ("embedding.", "enc.", "dec.")
_LORA_RE = re.compile(r"\.(lora_A|lora_B)\.([^.]+)\.weight$")
_KNOWN = ("bare backbone ('embedding.*', 'enc.*'), segmentor ('backbone.*', 'seg_head.*'), Sonata/Concerto "
          "pretraining ('module.student.backbone.*') and DefaultLORASegmentorV2 ('backbone.enc.base_model.model.*')")


@dataclass
class SonataLoadReport(LoadReport):
    """What `load_sonata_checkpoint` matched, on top of `LoadReport`'s loaded/missing/unexpected/mismatched.

    Attributes:
        layout: the checkpoint layout found, one of `LAYOUTS`.
        skipped: checkpoint keys this model cannot hold by design (pretraining teacher and heads, a
            mask token the model lacks, `seg_head` when loading into a bare backbone).
        kept_init: model keys the checkpoint has no counterpart for by design (the head of a
            segmentor loaded from backbone weights, LoRA weights when the checkpoint has none).
        lora_rank: the LoRA rank found in the checkpoint, or None.
        notes: one sentence per thing skipped or kept, for the user.
    """

    layout: str = ""
    skipped: list[str] = field(default_factory=list)
    kept_init: list[str] = field(default_factory=list)
    lora_rank: int | None = None
    notes: list[str] = field(default_factory=list)


def _prefix_before(key: str, marker: str) -> str | None:
    at = key.find(marker)
    return key[:at] if at >= 0 else None


def _describe_prefixes(keys: list[str]) -> str:
    """The most common first two name parts, e.g. "'model.backbone.' (120 keys)"."""
    counts = Counter(".".join(k.split(".")[:2]) + "." for k in keys)
    return ", ".join(f"{p!r} ({n} keys)" for p, n in counts.most_common(3))


def split_checkpoint(state: dict[str, torch.Tensor], prefix: str | None = None, source: str = "checkpoint"
                     ) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Finds the layout of a PT-v3m2 state dict and splits it into backbone and head tensors.

    Args:
        state: tensors by key, `module.` already stripped or not.
        prefix: read the backbone from keys under this prefix instead of detecting the layout.
        source: the file name used in error messages.

    Returns:
        (layout, backbone tensors by bare key, seg_head tensors by `seg_head.*` key, skipped keys).
        Bare keys keep PEFT's `base_layer`/`lora_A.<name>` parts where the checkpoint has them.

    Raises:
        CheckpointError: when no known layout (or nothing under `prefix`) is found; the message names
            the prefixes the checkpoint does have.
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    keys = list(state)
    head = {k: v for k, v in state.items() if k.startswith("seg_head.")}
    if prefix is not None:
        layout, root = "prefix", prefix
    elif any(k.startswith(PRETRAIN_PREFIX) for k in keys):
        layout, root = "pretraining", PRETRAIN_PREFIX
    elif any(k.startswith(PEFT_ENC_PREFIX) for k in keys):
        layout, root = "lora_segmentor", "backbone."
    elif any(k.startswith("backbone.") for k in keys):
        layout, root = "segmentor", "backbone."
    elif any(k.startswith(_BACKBONE_ROOTS) for k in keys):
        layout, root = "backbone", ""
    else:
        found = {p for k in keys if (p := _prefix_before(k, "embedding.stem.linear.weight")) is not None}
        hint = (f" The embedding sits under {sorted(found)[0]!r}: pass prefix={sorted(found)[0]!r}." if found
                else " It may not be a PT-v3m2 checkpoint (no 'embedding.stem.linear.weight').")
        raise CheckpointError(f"{source}: no PT-v3m2 keys under a known prefix, got {_describe_prefixes(keys)}. "
                              f"Known layouts: {_KNOWN}.{hint}")
    backbone: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state.items():
        if key.startswith("seg_head."):
            continue
        if not key.startswith(root):
            skipped.append(key)
            continue
        bare = key[len(root):]
        if layout == "lora_segmentor" and bare.startswith("enc.base_model.model."):
            bare = "enc." + bare[len("enc.base_model.model."):]
        backbone[bare] = value
    if not backbone:
        raise CheckpointError(f"{source}: no keys under prefix {root!r}, got {_describe_prefixes(keys)}. "
                              f"Pass the prefix the backbone keys share, or none to detect {_KNOWN}.")
    return layout, backbone, head, sorted(skipped)


def _fold(key: str) -> str:
    """A key with PEFT's wrapping folded out: `qkv.base_layer.weight` -> `qkv.weight`, adapter -> `*`."""
    key = key.replace(".base_layer.", ".")
    return _LORA_RE.sub(lambda m: f".{m[1]}.*.weight", key)


def _adapters(keys: list[str]) -> set[str]:
    return {m[2] for k in keys if (m := _LORA_RE.search(k)) is not None}


def _lora_rank(state: dict[str, torch.Tensor]) -> int | None:
    ranks = {int(v.shape[0]) for k, v in state.items() if ".lora_A." in k}
    return ranks.pop() if len(ranks) == 1 else (max(ranks) if ranks else None)


def load_sonata_checkpoint(model: nn.Module, path: str | Path, strict: bool = True,
                           prefix: str | None = None, skip_lora: bool = False) -> SonataLoadReport:
    """Loads a Sonata/Concerto/Pointcept PT-v3m2 checkpoint into a backbone or a `SonataSegmentor`.

    Args:
        model: `PointTransformerV3M2` or `SonataSegmentor`, with or without lora3d LoRA layers.
            A checkpoint with LoRA needs the same adapter injected first (see `inject_pointcept_lora`).
        path: `.pth`/`.pt` (read with weights_only=True) or `.safetensors`.
        strict: raise unless every model key is loaded or kept by design (see `SonataLoadReport`).
            When False, matching keys load and the rest is only reported.
        prefix: read the backbone from keys under this prefix (for layouts lora3d does not detect).
        skip_lora: load the base weights of a LoRA checkpoint into a model without LoRA layers and set the
            LoRA weights aside (listed in `skipped`), e.g. to use a DefaultLORASegmentorV2 checkpoint as a
            base; without it such a checkpoint is refused with the call that injects the adapter first.

    Returns:
        The load report.

    Raises:
        CheckpointError: unreadable file, unknown layout, or (strict) missing/unexpected/mismatched keys.
    """
    layout, backbone, head, skipped = split_checkpoint(read_state_dict(path), prefix, str(path))
    own = model.state_dict()
    wrapped = any(k.startswith("backbone.") for k in own)
    ckpt = {f"backbone.{k}": v for k, v in backbone.items()} if wrapped else dict(backbone)
    report = SonataLoadReport(path=str(path), layout=layout, skipped=skipped, lora_rank=_lora_rank(backbone))
    if skipped:
        report.notes.append(f"skipped {len(skipped)} keys outside the backbone ({_describe_prefixes(skipped)})")
    if head and wrapped:
        ckpt.update(head)
    elif head:
        report.skipped.extend(sorted(head))
        report.notes.append("skipped the checkpoint's seg_head: the model is a bare backbone")
    mask = "backbone.embedding.mask_token" if wrapped else "embedding.mask_token"
    if mask in ckpt and mask not in own:
        del ckpt[mask]
        report.skipped.append(mask)
        report.notes.append("skipped the pretraining mask token: the model is built with mask_token=False")

    ckpt_adapters, own_adapters = _adapters(list(ckpt)), _adapters(list(own))
    if ckpt_adapters and not own_adapters and skip_lora:
        lora_keys = sorted(k for k in ckpt if _LORA_RE.search(k))
        for key in lora_keys:
            del ckpt[key]
        report.skipped.extend(lora_keys)
        report.notes.append(f"set aside the checkpoint's LoRA weights ({len(lora_keys)} tensors, rank "
                            f"{report.lora_rank}): the base and head loaded without them")
        ckpt_adapters = set()
    if ckpt_adapters and not own_adapters:
        raise CheckpointError(
            f"{path}: the checkpoint holds LoRA weights (rank {report.lora_rank}, adapter "
            f"{sorted(ckpt_adapters)[0]!r}) but the model has no LoRA layers, got a plain model. Inject first: "
            f"`inject_pointcept_lora(model, r={report.lora_rank}, lora_alpha=<lora_alpha of the training config; "
            "Pointcept's default is 16>)`, then load.")
    # The checkpoint's adapter loads into the model's adapter of the same name, else into its only one.
    paired = ckpt_adapters & own_adapters or (own_adapters if len(own_adapters) == 1 else set())
    if len(ckpt_adapters) > 1 or (ckpt_adapters and not paired):
        raise CheckpointError(f"{path}: cannot pair the checkpoint's adapters {sorted(ckpt_adapters)!r} with the "
                              f"model's {sorted(own_adapters)!r}. Keep one adapter in the model, or name it alike.")
    by_fold = {_fold(k): k for k in own if not _adapters([k]) or _adapters([k]) <= paired}
    usable: dict[str, torch.Tensor] = {}
    matched: set[str] = set()
    for key, value in ckpt.items():
        target = by_fold.get(_fold(key))
        if target is None:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[target].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[target].shape)))
            matched.add(target)
        else:
            usable[target] = value
            matched.add(target)
    for key in own:
        if key in matched:
            continue
        by_design = ((key.startswith("seg_head.") and not head)
                     or (not ckpt_adapters and _adapters([key])))
        (report.kept_init if by_design else report.missing).append(key)
    if any(k.startswith("seg_head.") for k in report.kept_init):
        report.notes.append("the checkpoint has no seg_head: the head keeps its initialisation")
    if any(_adapters([k]) for k in report.kept_init):
        report.notes.append("the checkpoint has no LoRA weights: the model's LoRA layers keep their initialisation")
    if strict and not report.ok:
        raise CheckpointError(f"{path}: checkpoint ({layout} layout) does not match the model, got "
                              f"{report.mismatch_summary()}. {_mismatch_hint(report)}")
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    return report


def _mismatch_hint(report: SonataLoadReport) -> str:
    def only(keys: list[str], part: str) -> bool:
        return bool(keys) and all(part in k for k in keys)

    if only(report.missing, "dec."):
        return ("The checkpoint has no decoder: build the model with enc_mode=True, or load with strict=False "
                "to train the decoder from scratch.")
    if only(report.unexpected, "dec."):
        return "The checkpoint has a decoder: build the model with enc_mode=False and the checkpoint's dec_* config."
    if report.mismatched and all(k.startswith("seg_head.") for k, _, _ in report.mismatched):
        return "The head has another number of classes: load with strict=False to keep a fresh head."
    if report.mismatched and all(".lora_" in k for k, _, _ in report.mismatched):
        return f"The LoRA rank differs: inject with r={report.lora_rank}."
    return "Build the model with the checkpoint's config (e.g. CONCERTO_LARGE_CONFIG), or load with strict=False."


def pointcept_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Returns a `SonataSegmentor`'s weights in the layout Pointcept's segmentors load.

    Without LoRA layers this is `DefaultSegmentorV2`'s layout (the model's own keys). With one LoRA
    adapter it is `DefaultLORASegmentorV2`'s: every `backbone.enc.` key moves under
    `backbone.enc.base_model.model.` and the adapter is named `default`, as `get_peft_model` names it.

    Raises:
        CheckpointError: when the model is not wrapped (`backbone.*`) or holds several adapters.
    """
    state = model.state_dict()
    if not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(f"model: Pointcept's segmentor layout needs a segmentor, got {type(model).__name__}. "
                              "Wrap the backbone in SonataSegmentor.")
    adapters = _adapters(list(state))
    if not adapters:
        return dict(state)
    if len(adapters) > 1:
        raise CheckpointError(f"model: DefaultLORASegmentorV2 holds one adapter, got {sorted(adapters)!r}. "
                              "Remove the others first.")
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.enc."):
            key = PEFT_ENC_PREFIX + key[len("backbone.enc."):]
            key = _LORA_RE.sub(lambda m: f".{m[1]}.default.weight", key)
        out[key] = value
    return out
