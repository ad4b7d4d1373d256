"""DSpark training loss, checked by hand on toy cases."""
from __future__ import annotations

import math

import pytest
import torch

from dspark_sglang.training.losses import LossWeights, dspark_loss


def test_loss_one_slot_by_hand():
    """V=2, logits [0, 0] -> p_d = (.5, .5); target logits [0, log 3] -> p_t = (.25, .75); label 1.
    CE = log 2; L1 = |.5−.25| + |.5−.75| = 0.5; confidence label 1 − ½·0.5 = 0.75;
    conf logit 0 -> BCE = −(.75 log .5 + .25 log .5) = log 2.
    loss = 0.1·log 2 + 0.9·0.5 + 1.0·log 2."""
    logits = torch.zeros(1, 1, 2)
    target = torch.tensor([[[0.0, math.log(3.0)]]])
    loss, stats = dspark_loss(logits, target, torch.tensor([[1]]), torch.tensor([[True]]), torch.zeros(1, 1))
    expected = 0.1 * math.log(2) + 0.9 * 0.5 + math.log(2)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert stats["l1"] == pytest.approx(0.5) and stats["ce"] == pytest.approx(math.log(2))


def test_slot_weights_and_valid_prefix():
    """Two slots with per-slot losses (CE only) log 2 and 0 (a one-hot-ish draft), weights 1 and e^{-1/4}:
    loss = (1·log 2 + e^{-1/4}·ε) / (1 + e^{-1/4}); with slot 1 invalid the loss is slot 0 alone."""
    logits = torch.tensor([[[0.0, 0.0], [0.0, 50.0]]])
    target = logits.clone()
    labels = torch.tensor([[1, 1]])
    w = LossWeights(ce=1.0, l1=0.0, bce=0.0)
    loss, _ = dspark_loss(logits, target, labels, torch.tensor([[True, True]]), None, w)
    w1 = math.exp(-0.25)
    assert float(loss) == pytest.approx(math.log(2) / (1 + w1), rel=1e-5)
    loss, _ = dspark_loss(logits, target, labels, torch.tensor([[True, False]]), None, w)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)


def test_confidence_label_is_detached():
    """The BCE term must not push the draft distribution: grads of logits come from CE and L1 only."""
    logits = torch.randn(2, 3, 5, requires_grad=True)
    target = torch.randn(2, 3, 5)
    labels = torch.randint(0, 5, (2, 3))
    valid = torch.ones(2, 3, dtype=torch.bool)
    conf = torch.randn(2, 3, requires_grad=True)
    loss_full, _ = dspark_loss(logits, target, labels, valid, conf)
    g_full, = torch.autograd.grad(loss_full, logits)
    loss_noconf, _ = dspark_loss(logits, target, labels, valid, None)
    g_noconf, = torch.autograd.grad(loss_noconf, logits)
    torch.testing.assert_close(g_full, g_noconf)
