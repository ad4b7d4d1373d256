"""Hand-computed checks of the evaluator's pure metric functions."""
import math

import numpy as np
import pytest

from dspark_sglang.evaluation import metrics


def test_tau_counts_the_bonus_token():
    # rounds accepted 0, 2, 4 drafts -> 1, 3, 5 tokens -> τ = 3
    assert metrics.mean_accepted_length(np.array([0, 2, 4])) == 3.0
    assert math.isnan(metrics.mean_accepted_length(np.array([], dtype=int)))


def test_acceptance_at_k():
    # accepted = [0, 1, 3, 3], γ = 3: ≥1 in 3/4, ≥2 in 2/4, ≥3 in 2/4
    got = metrics.acceptance_at_k(np.array([0, 1, 3, 3]), 3)
    np.testing.assert_allclose(got, [0.75, 0.5, 0.5])


def test_conditional_acceptance_uses_reached_and_verified_denominator():
    """accepted = [0, 1, 2, 2, 4], verified = [4, 4, 2, 4, 4], γ = 4.
    k=1: reached (acc ≥ 0, ver ≥ 1) all 5; passed (acc ≥ 1) 4 -> 0.8
    k=2: reached (acc ≥ 1, ver ≥ 2) rounds 1,2,3,4 = 4; passed (acc ≥ 2) 3 -> 0.75
    k=3: reached (acc ≥ 2, ver ≥ 3) rounds 3,4 (round 2 verified only 2) = 2; passed (acc ≥ 3) 1 -> 0.5
    k=4: reached (acc ≥ 3, ver ≥ 4) round 4 = 1; passed 1 -> 1.0
    """
    got = metrics.conditional_acceptance(np.array([0, 1, 2, 2, 4]), np.array([4, 4, 2, 4, 4]), 4)
    np.testing.assert_allclose(got, [0.8, 0.75, 0.5, 1.0])


def test_conditional_acceptance_nan_when_never_reached():
    got = metrics.conditional_acceptance(np.array([0, 0]), np.array([3, 3]), 3)
    assert got[0] == 0.0 and math.isnan(got[1]) and math.isnan(got[2])


def test_verify_rate():
    # verified 7 + 3 + 0 of 3·7 drafted = 10/21
    assert metrics.verify_rate(np.array([7, 3, 0]), 7) == pytest.approx(10 / 21)


def test_slot_samples_only_tested_slots():
    """Round A: accepted 1 of 3 verified -> slot 0 (label 1), slot 1 (label 0); slot 2 never tested.
    Round B: accepted 2 of 2 verified (γ=3) -> slots 0, 1 (label 1); slot 2 not verified."""
    conf = np.array([[0.9, 0.4, 0.2], [0.8, 0.7, 0.6]])
    scores, labels = metrics.slot_acceptance_samples(np.array([1, 2]), np.array([3, 2]), conf)
    assert scores.tolist() == [0.9, 0.4, 0.8, 0.7]
    assert labels.tolist() == [True, False, True, True]


def test_prefix_survival_samples():
    """c = [0.5, 0.8, 0.5]: survival [0.5, 0.4, 0.2]; accepted 1 of 3 verified -> labels [1, 0, 0]."""
    a, y = metrics.prefix_survival_samples(np.array([1]), np.array([3]), np.array([[0.5, 0.8, 0.5]]))
    np.testing.assert_allclose(a, [0.5, 0.4, 0.2])
    assert y.tolist() == [True, False, False]


def test_auc_by_hand_with_ties():
    """positives {0.8, 0.5}, negatives {0.5, 0.2}: pairs (0.8>0.5)=1 (0.8>0.2)=1 (0.5=0.5)=½ (0.5>0.2)=1
    -> 3.5 / 4 = 0.875."""
    got = metrics.roc_auc(np.array([0.8, 0.5, 0.5, 0.2]), np.array([1, 1, 0, 0]))
    assert got == pytest.approx(0.875)
    assert metrics.roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert metrics.roc_auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert math.isnan(metrics.roc_auc(np.array([0.3]), np.array([1])))


def test_ece_by_hand():
    """10 bins. probs 0.05 ×2 (labels 0, 0) -> bin 0 gap 0.05; 0.95 ×2 (labels 1, 0) -> bin 9 gap 0.45;
    1.0 (label 1) -> bin 9 too. Bin 9: mean prob (0.95+0.95+1)/3 = 0.9667, mean label 2/3 -> gap 0.3.
    ECE = 2/5·0.05 + 3/5·0.3 = 0.02 + 0.18 = 0.2."""
    probs = np.array([0.05, 0.05, 0.95, 0.95, 1.0])
    labels = np.array([0, 0, 1, 0, 1])
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.2)
    assert metrics.expected_calibration_error(np.array([0.7, 0.7]), np.array([1, 1]), num_bins=1) == pytest.approx(0.3)
