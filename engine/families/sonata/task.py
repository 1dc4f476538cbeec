"""Provides the Sonata family's semantic segmentation task: Pointcept's losses by name, and its metrics.

Losses (Pointcept@d74c646 pointcept/models/losses): `cross_entropy` is `CrossEntropyLoss(ignore_index=-1)`
(mean over labelled points); `lovasz` is `LovaszLoss(mode="multiclass", per_image=False)`: the Lovász-softmax
of Berman et al. (CVPR 2018) over the batch's labelled points, averaged over the classes present in the
labels. Every Sonata/Concerto semseg config sums the two with weight 1 (`model.losses`).

Metrics are SceneSplat's (engine.families.scenesplat.task): a confusion matrix over the batches, then mIoU,
mAcc, allAcc and per-class IoU, with the same conventions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.families.base import StepOutput
from engine.families.scenesplat.task import FOREGROUND_EXCLUDE, evaluate_segmentation, model_inputs

IGNORE_INDEX = -1


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over labelled points; 0 (with a gradient path) when none is labelled.

    Args:
        logits: (N, C) class scores.
        target: (N,) int64 class ids; `ignore_index` rows are skipped.
    """
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index)


def _lovasz_gradient(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order.

    Entry i is J(first i+1 errors) - J(first i errors), where J(k) = 1 - |fg ∩ rest| / |fg ∪ first k|
    is the Jaccard loss when the k largest-error points are counted as mistakes (paper, Eq. 8).
    """
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Multi-class Lovász-softmax over the labelled points, averaged over the classes present.

    1. p = softmax(logits); drop rows labelled `ignore_index`.
    2. For every class c present in the labels: errors e_i = |[y_i = c] - p_ic|, sorted decreasingly;
       loss_c = <e_sorted, lovasz_gradient([y = c]_sorted)>.
    3. Mean over those classes; 0 (with a gradient path) when no point is labelled.

    Args:
        logits: (N, C) class scores.
        target: (N,) int64 class ids.
    """
    keep = target != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    probs = logits.float().softmax(dim=1)[keep]
    labels = target[keep].long()
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_gradient(fg[order])))
    return torch.stack(losses).mean()


LOSS_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "cross_entropy": cross_entropy_loss,
    "lovasz": lovasz_softmax_loss,
}
"""Loss name (`model.losses`) -> `fn(logits, target, ignore_index)`."""


def combined_loss(logits: torch.Tensor, target: torch.Tensor, losses: Iterable[tuple[str, float]],
                  ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the named losses, as Pointcept's `Criteria` sums its criteria.

    Returns:
        (loss, parts) where parts holds each unweighted loss by name.
    """
    total = None
    parts = {}
    for name, weight in losses:
        value = LOSS_FUNCTIONS[name](logits, target, ignore_index)
        parts[name] = float(value.detach())
        total = weight * value if total is None else total + weight * value
    return total, parts


@dataclass(frozen=True)
class SonataSemsegTask:
    """Semantic segmentation: the named losses summed; mIoU, mAcc, allAcc and per-class IoU over the batches."""

    class_names: tuple[str, ...]
    losses: tuple[tuple[str, float], ...] = (("cross_entropy", 1.0), ("lovasz", 1.0))
    ignore_index: int = IGNORE_INDEX
    fg_exclude: tuple[str, ...] = FOREGROUND_EXCLUDE
    name: str = "semseg"
    primary_metric: str = "miou"
    greater_is_better: bool = True

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        logits = model(model_inputs(batch))  # (N, C)
        loss, parts = combined_loss(logits, batch["segment"], self.losses, self.ignore_index)
        metrics = parts if len(parts) > 1 else {}
        return StepOutput(loss=loss, metrics=metrics, num_samples=len(batch["offset"]),
                          num_tokens=int(batch["coord"].shape[0]))

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        return evaluate_segmentation(model, batches, self.class_names,
                                     lambda logits, target: combined_loss(logits, target, self.losses,
                                                                          self.ignore_index)[0],
                                     self.ignore_index, self.fg_exclude)
