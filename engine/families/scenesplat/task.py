"""Provides the SceneSplat tasks' losses and metrics: semantic segmentation and language-feature distillation.

Semantic segmentation (`semseg`): cross-entropy with `ignore_index` -1; evaluation accumulates a
confusion matrix and reports mIoU, mAcc, allAcc and per-class IoU.

Language distillation (`lang`), after SceneSplat's `Criteria` (SceneSplat@149d7b6:
pointcept/models/losses/misc.py): cosine (1 - cos) + squared L2 between the model's unit-norm
feature and the target language feature, both averaged over the valid Gaussians
(`valid_feat_mask`), plus an optional aggregated contrastive term. Evaluation is zero-shot
segmentation against a text-embedding table (reference ptv3.md §2.7).

NOTE: metric conventions, shared by both tasks:
- rows of the confusion matrix are ground truth, columns predictions; an extra last column counts
  points whose prediction is "none" (-1, below the zero-shot confidence threshold): they are false
  negatives of their true class and false positives of no class, as SceneSplat's evaluator counts them;
- a class absent from both ground truth and predictions has no IoU (0/0) and is left out of every mean
  (Pointcept does the same); a class present in either one counts, with IoU 0 when never right;
- allAcc is correct / labelled points; points labelled `ignore_index` are not counted anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import DataError
from engine.families.base import StepOutput
from engine.families.scenesplat.data import load_text_embeddings
from engine.families.scenesplat.synthetic import SYNTHETIC_CLASSES, text_embedding_table

IGNORE_INDEX = -1
FOREGROUND_EXCLUDE = ("wall", "floor", "ceiling")
"""Classes SceneSplat leaves out of fg-mIoU / fg-mAcc."""
ZERO_SHOT_THRESHOLD = 0.1
"""SceneSplat's `confidence_threshold`: below this sigmoid score the prediction becomes -1."""


# ---------------------------------------------------------------------------------------- losses
def semseg_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy over labelled points.

    Args:
        logits: (N, C) class scores.
        target: (N,) int64 class ids; `ignore_index` rows are skipped.

    Returns:
        The mean loss; 0 (with a gradient path) when no point is labelled.
    """
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index)


def aggregated_contrastive_loss(
    feat: torch.Tensor,
    segment: torch.Tensor,
    temperature: float = 0.2,
    min_points: int = 100,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SceneSplat's aggregated contrastive term, simplified to one scene batch.

    1. For every class with at least `min_points` points, split its points randomly in two halves.
    2. Sum each half's features and L2-normalise the sums: two "views" per class.
    3. Symmetric InfoNCE over classes (view 1 of class i against view 2 of every class; diagonal =
       positives), with `temperature`.

    Args:
        feat: (N, D) features of valid points.
        segment: (N,) class ids (-1 rows are skipped).

    Returns:
        The loss; 0 when fewer than two classes qualify (InfoNCE needs negatives).
    """
    views_a, views_b = [], []
    for cls in torch.unique(segment):
        if int(cls) < 0:
            continue
        index = torch.nonzero(segment == cls).squeeze(1)
        if index.numel() < min_points:
            continue
        perm = index[torch.randperm(index.numel(), generator=generator, device="cpu").to(index.device)]
        half = perm.numel() // 2
        views_a.append(feat[perm[:half]].sum(0))
        views_b.append(feat[perm[half : 2 * half]].sum(0))
    if len(views_a) < 2:
        return feat.sum() * 0.0
    a = F.normalize(torch.stack(views_a).float(), dim=1)
    b = F.normalize(torch.stack(views_b).float(), dim=1)
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=feat.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def lang_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    cos_weight: float = 1.0,
    l2_weight: float = 1.0,
    contrastive_weight: float = 0.0,
    segment: torch.Tensor | None = None,
    temperature: float = 0.2,
    min_points: int = 100,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Language-feature distillation loss over the valid Gaussians.

    Args:
        pred: (N, D) model features (the language model L2-normalises them).
        target: (N, D) target language features (SigLIP features are unit-norm).
        valid: (N,) bool, rows with a target feature.
        cos_weight, l2_weight: weights of mean(1 - cos) and mean squared L2 distance.
        contrastive_weight: weight of `aggregated_contrastive_loss` (needs `segment`); 0 disables it.
        segment: (N,) class ids for the contrastive term.

    Returns:
        (loss, parts) where parts holds the unweighted `cos`, `l2` (and `contrastive`) values.
    """
    valid = valid.bool()
    if not bool(valid.any()):
        zero = pred.sum() * 0.0
        return zero, {"cos": 0.0, "l2": 0.0}
    p, t = pred[valid].float(), target[valid].float()
    cos = (1.0 - F.cosine_similarity(p, t, dim=1)).mean()
    l2 = ((p - t) ** 2).sum(1).mean()
    loss = cos_weight * cos + l2_weight * l2
    parts = {"cos": float(cos.detach()), "l2": float(l2.detach())}
    if contrastive_weight > 0 and segment is not None:
        con = aggregated_contrastive_loss(p, segment[valid], temperature, min_points)
        loss = loss + contrastive_weight * con
        parts["contrastive"] = float(con.detach())
    return loss, parts


# ---------------------------------------------------------------------------------------- metrics
def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Counts (ground truth, prediction) pairs.

    Args:
        pred: (N,) predicted ids; -1 (or any id outside [0, C)) means "no prediction".
        target: (N,) true ids; `ignore_index` rows are not counted.
        num_classes: C.

    Returns:
        (C, C + 1) int64; column C counts labelled points with no prediction.
    """
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    pred, target = pred[keep], target[keep]
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, torch.full_like(pred, num_classes))
    flat = target * (num_classes + 1) + pred
    counts = torch.bincount(flat.cpu(), minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def segmentation_metrics(
    matrix: torch.Tensor,
    class_names: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, float]:
    """mIoU, mAcc, allAcc and per-class IoU from a confusion matrix (see the module NOTE).

    Args:
        matrix: (C, C) or (C, C + 1) counts, rows ground truth.
        class_names: names for the per-class keys `iou/<name>` (default `class_<i>`).
        exclude: class names additionally reported without: `fg_miou`, `fg_macc` over the rest.

    Returns:
        `miou`, `macc`, `allacc`, `iou/<name>` for classes that count, and `fg_miou`/`fg_macc`
        when `exclude` is given. Means over no class are 0.
    """
    matrix = matrix.double()
    c = matrix.shape[0]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(c)]
    tp = torch.diagonal(matrix[:, :c])
    gt = matrix.sum(1)
    predicted = matrix[:, :c].sum(0)
    union = gt + predicted - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    labelled = gt > 0
    acc = torch.where(labelled, tp / gt.clamp(min=1), torch.zeros_like(tp))

    def mean(values: torch.Tensor, mask: torch.Tensor) -> float:
        return float(values[mask].mean()) if bool(mask.any()) else 0.0

    out = {
        "miou": mean(iou, present),
        "macc": mean(acc, labelled),
        "allacc": float(tp.sum() / gt.sum()) if float(gt.sum()) > 0 else 0.0,
    }
    for i in range(c):
        if bool(present[i]):
            out[f"iou/{names[i]}"] = float(iou[i])
    if exclude:
        fg = torch.tensor([n not in set(exclude) for n in names], dtype=torch.bool)
        out["fg_miou"] = mean(iou, present & fg)
        out["fg_macc"] = mean(acc, labelled & fg)
    return out


def zero_shot_predict(
    feat: torch.Tensor, text: torch.Tensor, threshold: float = ZERO_SHOT_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor]:
    """SceneSplat's zero-shot labelling (reference ptv3.md §2.7 steps 1-3; no kNN voting).

    1. L2-normalise the point features and the text embeddings.
    2. logits = feat @ text^T, probabilities = sigmoid(logits) (not softmax).
    3. Prediction = argmax; a point whose top probability is below `threshold` gets -1.

    Args:
        feat: (N, D) point features.
        text: (C, D) text embeddings, one row per class.
        threshold: SceneSplat's `confidence_threshold` (0.1).

    Returns:
        (pred (N,) int64 with -1 for unconfident points, probabilities (N, C)).
    """
    feat = F.normalize(feat.float(), dim=1)
    text = F.normalize(text.float().to(feat.device), dim=1)
    prob = torch.sigmoid(feat @ text.T)
    top, pred = prob.max(dim=1)
    pred = torch.where(top < threshold, torch.full_like(pred, IGNORE_INDEX), pred)
    return pred, prob


# ---------------------------------------------------------------------------------------- strategies
def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keys PTv3 reads from a collated batch."""
    return {k: batch[k] for k in ("coord", "grid_coord", "feat", "offset") if k in batch}


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    class_names: Sequence[str],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ignore_index: int = IGNORE_INDEX,
    fg_exclude: Sequence[str] = FOREGROUND_EXCLUDE,
) -> dict[str, float]:
    """Segmentation metrics over the batches (`segmentation_metrics`) plus `val_loss`.

    Args:
        model: maps `model_inputs(batch)` to (N, C) logits.
        batches: collated batches with `segment` labels.
        class_names: the C class names.
        loss_fn: (logits, target) -> mean loss over labelled points; `val_loss` weights it by their count.
        ignore_index: the label of unlabelled points.
        fg_exclude: classes left out of the foreground means.
    """
    c = len(class_names)
    matrix = torch.zeros(c, c + 1, dtype=torch.int64)
    loss_sum, labelled = 0.0, 0
    for batch in batches:
        logits = model(model_inputs(batch))
        target = batch["segment"]
        n = int((target != ignore_index).sum())
        if n:
            loss_sum += float(loss_fn(logits, target)) * n
            labelled += n
        matrix += confusion_matrix(logits.argmax(1), target, c, ignore_index)
    metrics = segmentation_metrics(matrix, list(class_names), fg_exclude)
    metrics["val_loss"] = loss_sum / max(labelled, 1)
    return metrics


@dataclass(frozen=True)
class SemsegTask:
    """Semantic segmentation: cross-entropy; mIoU, mAcc, allAcc and per-class IoU over the batches."""

    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX
    fg_exclude: tuple[str, ...] = FOREGROUND_EXCLUDE
    name: str = "semseg"
    primary_metric: str = "miou"
    greater_is_better: bool = True

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        logits = model(model_inputs(batch))  # (N, C)
        loss = semseg_loss(logits, batch["segment"], self.ignore_index)
        return StepOutput(loss=loss, num_samples=len(batch["offset"]), num_tokens=int(batch["coord"].shape[0]))

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        return evaluate_segmentation(model, batches, self.class_names,
                                     lambda logits, target: semseg_loss(logits, target, self.ignore_index),
                                     self.ignore_index, self.fg_exclude)


@dataclass(frozen=True)
class LangTask:
    """Language-feature distillation: cosine + L2 (+ contrastive); zero-shot segmentation for evaluation.

    The zero-shot table is `text_embeddings` (a file) or, without one, the synthetic rooms' table at the
    backbone's width; it is read on first use.
    """

    width: int
    text_embeddings: Path | None = None
    class_names: tuple[str, ...] | None = None
    ignore_index: int = IGNORE_INDEX
    cos_weight: float = 1.0
    l2_weight: float = 1.0
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.2
    contrastive_min_points: int = 100
    zero_shot_threshold: float = ZERO_SHOT_THRESHOLD
    fg_exclude: tuple[str, ...] = FOREGROUND_EXCLUDE
    name: str = "lang"
    primary_metric: str = "miou"
    greater_is_better: bool = True
    _table: list = field(default_factory=list, compare=False, repr=False)

    def text_table(self) -> tuple[torch.Tensor, list[str]]:
        """The zero-shot text embeddings (C, D) and class names."""
        if not self._table:
            if self.text_embeddings is not None:
                table, names = load_text_embeddings(self.text_embeddings)
                names = list(self.class_names) if self.class_names else names
            else:
                table, names = text_embedding_table(SYNTHETIC_CLASSES, self.width), list(SYNTHETIC_CLASSES)
            self._table.append((torch.from_numpy(np.asarray(table, dtype=np.float32)), names))
        return self._table[0]

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        if "lang_feat" not in batch:
            raise DataError(
                f"{batch.get('scene_names', ['batch'])[0]}: the lang task needs `lang_feat.npy`, got a scene without "
                "it. Add language features to every scene or use `model.task: semseg`."
            )
        feat = model(model_inputs(batch))  # (N, D), unit rows
        loss, parts = lang_loss(
            feat, batch["lang_feat"], batch["valid_feat_mask"], self.cos_weight, self.l2_weight,
            self.contrastive_weight, batch.get("segment"), self.contrastive_temperature, self.contrastive_min_points,
        )
        return StepOutput(loss=loss, metrics=parts, num_samples=len(batch["offset"]),
                          num_tokens=int(batch["coord"].shape[0]))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Any]]) -> dict[str, float]:
        text, names = self.text_table()
        c = len(names)
        matrix = torch.zeros(c, c + 1, dtype=torch.int64)
        loss_sum, valid_total = 0.0, 0
        for batch in batches:
            feat = model(model_inputs(batch))
            if "lang_feat" in batch:
                valid = batch["valid_feat_mask"].bool()
                n = int(valid.sum())
                if n:
                    loss, _ = lang_loss(feat, batch["lang_feat"], valid, self.cos_weight, self.l2_weight)
                    loss_sum += float(loss) * n
                    valid_total += n
            if "segment" in batch:
                pred, _ = zero_shot_predict(feat, text, self.zero_shot_threshold)
                matrix += confusion_matrix(pred, batch["segment"], c, self.ignore_index)
        metrics = segmentation_metrics(matrix, names, self.fg_exclude)
        metrics["val_loss"] = loss_sum / max(valid_total, 1)
        return metrics
