"""Pointcept's losses by name: cross-entropy and the Lovász-softmax, checked against their definitions."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from engine.families.sonata.task import combined_loss, cross_entropy_loss, lovasz_softmax_loss


def _jaccard_loss(mistakes: torch.Tensor, fg: torch.Tensor) -> float:
    """The set function the Lovász extension interpolates: 1 - |fg \\ M| / |fg ∪ M| for the mistake set M."""
    fg, mistakes = fg.bool(), mistakes.bool()
    return 1.0 - float((fg & ~mistakes).sum()) / float((fg | mistakes).sum())


def test_lovasz_equals_the_jaccard_loss_on_binary_errors():
    """At 0/1 errors the Lovász extension equals the Jaccard loss of the points in error (its defining property);
    with the other class's probability 1 - p, a two-class softmax error at point i is |[y_i = c] - p_ic|."""
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    for wrong in itertools.product([0, 1], repeat=len(labels)):
        wrong = torch.tensor(wrong, dtype=torch.bool)
        pred = torch.where(wrong, 1 - labels, labels)
        logits = F.one_hot(pred, 2).float() * 60.0  # softmax is one-hot to float precision
        expected = sum(_jaccard_loss(wrong, labels == c) for c in (0, 1)) / 2
        assert float(lovasz_softmax_loss(logits, labels)) == pytest.approx(expected, abs=1e-6)


def test_lovasz_averages_only_present_classes_and_skips_ignored_points():
    logits = torch.randn(50, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (50,), generator=torch.Generator().manual_seed(1))  # classes 2..4 absent
    with_ignored = torch.cat([labels, torch.full((7,), -1)])
    more_logits = torch.cat([logits, torch.randn(7, 5)])
    assert torch.equal(lovasz_softmax_loss(more_logits, with_ignored), lovasz_softmax_loss(logits, labels))
    # an absent class with large probability does not add a term of its own (it only raises the errors of the others)
    probs = logits.softmax(1)
    manual = []
    for c in (0, 1):
        fg = (labels == c).float()
        errors, order = torch.sort((fg - probs[:, c]).abs(), descending=True)
        gts = fg[order]
        jac = 1 - (gts.sum() - gts.cumsum(0)) / (gts.sum() + (1 - gts).cumsum(0))
        manual.append(torch.dot(errors, torch.cat([jac[:1], jac[1:] - jac[:-1]])))
    assert float(lovasz_softmax_loss(logits, labels)) == pytest.approx(float(torch.stack(manual).mean()), abs=1e-6)


def test_no_labelled_point_gives_zero_with_a_gradient_path():
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.full((4,), -1)
    for fn in (cross_entropy_loss, lovasz_softmax_loss):
        loss = fn(logits, target)
        loss.backward()
        assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_combined_loss_sums_the_weighted_named_losses():
    logits = torch.randn(30, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    target = torch.randint(-1, 4, (30,), generator=torch.Generator().manual_seed(3))
    loss, parts = combined_loss(logits, target, (("cross_entropy", 1.0), ("lovasz", 0.5)))
    ce = F.cross_entropy(logits, target, ignore_index=-1)
    assert parts["cross_entropy"] == pytest.approx(float(ce.detach()), abs=1e-6)
    assert float(loss.detach()) == pytest.approx(float(ce.detach()) + 0.5 * parts["lovasz"], abs=1e-6)
    loss.backward()
    assert logits.grad.abs().sum() > 0
