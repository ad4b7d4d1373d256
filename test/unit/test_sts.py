"""Sequential Temperature Scaling on hand-made miscalibrated data."""
from __future__ import annotations

import numpy as np
import pytest

from dspark_sglang.calibration.sts import (expected_calibration_error, fit_sts, prefix_survival,
                                           prefix_survival_ece, survival_labels)


def _rounds(true_temps, num=40000, gamma=4, seed=0):
    """Rounds whose TRUE per-slot acceptance prob is σ(z_k / T_k): the raw logits z are miscalibrated
    by exactly T_k, so STS should recover T_k. Acceptance stops at the first rejection."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.0, 2.0, size=(num, gamma))
    p = 1 / (1 + np.exp(-z / np.asarray(true_temps)[None, :]))
    accepted = rng.random((num, gamma)) < p
    accept_lens = np.cumprod(accepted, axis=1).sum(1)
    return z, accept_lens


def test_ece_by_hand():
    """Bins: {0.9, 0.9} labels {1, 0} -> |0.9 − 0.5|·½ = 0.2; {0.1, 0.1} labels {0, 0} -> 0.1·½ = 0.05."""
    assert expected_calibration_error(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0])) == pytest.approx(0.25)


def test_survival_labels_and_product():
    assert survival_labels(np.array([0, 2]), 3).tolist() == [[False, False, False], [True, True, False]]
    a = prefix_survival(np.zeros((1, 3)), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(a, [[0.5, 0.25, 0.125]])


def test_sts_recovers_known_temperatures():
    true = [2.0, 0.5, 3.0, 1.0]
    z, accept_lens = _rounds(true)
    temps = fit_sts(z, accept_lens)
    np.testing.assert_allclose(temps, true, rtol=0.15)


def test_sts_reduces_ece():
    z, accept_lens = _rounds([2.5, 2.5, 0.4, 2.0], seed=1)
    before = prefix_survival_ece(z, accept_lens, [1.0] * 4)
    temps = fit_sts(z, accept_lens)
    after = prefix_survival_ece(z, accept_lens, temps)
    assert before > 0.05
    assert after < 0.02 and after < before / 3


def test_sts_is_sequential():
    """Slot 2 is fitted against the product with the FITTED slot-1 temperature: with slot 1 badly
    miscalibrated, fitting slot 2 alone (slot 1 at T=1) would pick another temperature."""
    z, accept_lens = _rounds([4.0, 1.0], gamma=2, seed=2)
    temps = fit_sts(z, accept_lens)
    assert temps[0] == pytest.approx(4.0, rel=0.15) and temps[1] == pytest.approx(1.0, rel=0.15)
