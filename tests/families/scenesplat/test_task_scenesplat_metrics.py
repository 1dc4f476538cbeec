"""Tests the SceneSplat task maths: confusion matrix, mIoU/mAcc/allAcc, zero-shot labelling, losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.families.scenesplat.task import (
    aggregated_contrastive_loss,
    confusion_matrix,
    lang_loss,
    segmentation_metrics,
    semseg_loss,
    zero_shot_predict,
)

TARGET = torch.tensor([0, 0, 0, 1, 1, 2, -1, 0])
PRED = torch.tensor([0, 1, 0, 1, -1, 1, 2, 0])


def test_confusion_matrix_counts_pairs_and_unassigned_predictions():
    m = confusion_matrix(PRED, TARGET, 3)
    expected = torch.tensor([[3, 1, 0, 0], [0, 1, 0, 1], [0, 1, 0, 0]])
    torch.testing.assert_close(m, expected)


def test_metrics_match_hand_computed_values():
    # IoU: class0 3/(4+3-3)=0.75, class1 1/(2+3-1)=0.25, class2 0/(1+0-0)=0; acc 3/4, 1/2, 0.
    out = segmentation_metrics(confusion_matrix(PRED, TARGET, 3), ["a", "b", "c"])
    assert out["miou"] == pytest.approx((0.75 + 0.25 + 0.0) / 3)
    assert out["macc"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert out["allacc"] == pytest.approx(4 / 7)
    assert out["iou/a"] == pytest.approx(0.75) and out["iou/c"] == 0.0


def test_class_absent_from_prediction_and_truth_is_left_out_and_foreground_excludes_named_classes():
    names = ["wall", "chair", "table", "floor"]
    out = segmentation_metrics(confusion_matrix(PRED, TARGET, 4), names, exclude=("wall", "floor", "ceiling"))
    assert out["miou"] == pytest.approx(1 / 3)  # class 3 (floor) appears nowhere: not a zero in the mean
    assert "iou/floor" not in out
    assert out["fg_miou"] == pytest.approx((0.25 + 0.0) / 2)
    assert out["fg_macc"] == pytest.approx((0.5 + 0.0) / 2)


def test_class_only_predicted_counts_with_zero_iou():
    m = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 2)
    out = segmentation_metrics(m)
    assert out["iou/class_0"] == pytest.approx(0.5)
    assert out["iou/class_1"] == 0.0
    assert out["miou"] == pytest.approx(0.25)
    assert out["macc"] == pytest.approx(0.5)  # accuracy averages labelled classes only


def test_zero_shot_uses_normalised_sigmoid_scores_argmax_and_threshold():
    text = torch.eye(3, 4) * 5.0  # rows are normalised inside
    feat = torch.tensor([[2.0, 0, 0, 0], [0, 0.1, 1.0, 0], [-1.0, -1.0, -1.0, 0], [0, 3.0, 0, 0]])
    pred, prob = zero_shot_predict(feat, text, threshold=0.5)
    assert pred.tolist() == [0, 2, -1, 1]
    assert prob[0, 0] == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert prob[2].max() == pytest.approx(1 / (1 + math.exp(1 / math.sqrt(3))))
    # SceneSplat's threshold 0.1 never fires on cosine scores: sigmoid(-1) = 0.269.
    pred_default, _ = zero_shot_predict(feat, text)
    assert (pred_default >= 0).all()


def test_semseg_loss_ignores_unlabelled_points():
    logits = torch.randn(5, 3, requires_grad=True)
    target = torch.tensor([0, -1, 2, -1, 1])
    keep = target >= 0
    expected = F.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(semseg_loss(logits, target), expected)
    zero = semseg_loss(logits, torch.full((5,), -1))
    zero.backward()
    assert float(zero.detach()) == 0.0 and logits.grad is not None


def test_lang_loss_is_cosine_plus_l2_over_valid_rows():
    e = torch.eye(4)
    pred = torch.stack([e[0], e[1], e[2]])
    target = torch.stack([e[0], e[2], e[3] * 7.0])
    valid = torch.tensor([True, True, False])
    loss, parts = lang_loss(pred, target, valid)
    # row 0: cos 0, l2 0; row 1: 1 - cos = 1, |e1 - e2|^2 = 2; row 2 ignored.
    assert parts["cos"] == pytest.approx(0.5) and parts["l2"] == pytest.approx(1.0)
    assert float(loss) == pytest.approx(1.5)
    loss2, _ = lang_loss(pred, target, valid, cos_weight=2.0, l2_weight=0.0)
    assert float(loss2) == pytest.approx(1.0)


def test_contrastive_term_rewards_class_separated_features():
    torch.manual_seed(0)
    segment = torch.arange(3).repeat_interleave(200)
    separated = F.normalize(torch.eye(3, 8)[segment] + 0.05 * torch.randn(600, 8), dim=1)
    mixed = F.normalize(torch.randn(600, 8), dim=1)
    good = aggregated_contrastive_loss(separated, segment, temperature=0.2)
    bad = aggregated_contrastive_loss(mixed, segment, temperature=0.2)
    assert float(good) < 0.05 < float(bad)
    # fewer than min_points per class: no term
    assert float(aggregated_contrastive_loss(separated[:150], segment[:150])) == 0.0
