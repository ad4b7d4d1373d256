"""OnlineCalibration (dspark_sglang.calibration.online_calibration): per-position c = σ(z/T + b) from
verify outcomes."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.calibration.online_calibration import OnlineCalibration


def _rounds(true_t, true_b, num: int, gen: torch.Generator, verify_lens=None, z_mean=2.0):
    """Synthetic verify rounds whose slot k is accepted with prob σ(z_k / T_k + b_k) given its prefix."""
    gamma = true_t.numel()
    z = torch.randn(num, gamma, generator=gen, dtype=torch.float64) * 2.0 + z_mean           # [N, γ]
    accept = torch.rand(num, gamma, generator=gen, dtype=torch.float64) < torch.sigmoid(z / true_t + true_b)
    lens = torch.full((num,), gamma, dtype=torch.int64) if verify_lens is None else verify_lens
    accepted = torch.minimum(torch.cumprod(accept.to(torch.int64), dim=1).sum(1), lens)     # [N]
    return z, lens, accepted


def test_recovers_the_calibration_that_generated_the_outcomes():
    gen = torch.Generator().manual_seed(0)
    true_t = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    true_b = torch.tensor([-1.0, 0.5, -0.5, 1.0], dtype=torch.float64)
    cal = OnlineCalibration(torch.ones(4), window=8192, refit_every=10**9, prior_samples=1e-3)
    for _ in range(60):
        z, lens, acc = _rounds(true_t, true_b, 200, gen)
        cal.observe(z, lens, acc)
    cal.refit()
    assert min(cal.num_observed(k) for k in range(4)) > 1000
    assert torch.allclose(cal.temperatures, true_t, rtol=0.2), cal.temperatures
    assert torch.allclose(cal.biases, true_b, atol=0.2), cal.biases


def test_selected_slots_still_calibrate():
    """The scheduler verifies only confident requests (here: z_1 > 2, whole block); the fit on what it
    verified still recovers the calibration (selection on z, not on the outcome)."""
    gen = torch.Generator().manual_seed(1)
    true_t = torch.tensor([2.0, 3.0], dtype=torch.float64)
    true_b = torch.tensor([-1.5, 0.0], dtype=torch.float64)
    cal = OnlineCalibration(torch.ones(2), window=8192, refit_every=10**9, prior_samples=1e-3)
    for _ in range(40):
        z, _, _ = _rounds(true_t, true_b, 400, gen, z_mean=1.0)
        lens = torch.where(z[:, 0] > 2.0, 2, 0)
        accept = torch.rand(z.shape, generator=gen, dtype=torch.float64) < torch.sigmoid(z / true_t + true_b)
        accepted = torch.minimum(torch.cumprod(accept.to(torch.int64), 1).sum(1), lens)
        cal.observe(z, lens, accepted)
    cal.refit()
    # slot 0 was only ever seen at z > 2, where T and b are hard to tell apart: check the confidence there
    z_seen = torch.linspace(2.0, 6.0, 9, dtype=torch.float64).unsqueeze(1).expand(9, 2)
    truth = torch.sigmoid(z_seen / true_t + true_b)
    assert (cal.confidence(z_seen)[:, 0] - truth[:, 0]).abs().max() < 0.05
    assert abs(float(cal.temperatures[1]) - 3.0) < 0.9 and abs(float(cal.biases[1])) < 0.3


def test_only_outcome_revealing_slots_are_observed():
    """Slot k counts iff it was verified (k < ℓ) and its prefix was accepted (k ≤ accepted); undrafted
    slots (−inf logits) never count."""
    cal = OnlineCalibration(torch.ones(4), refit_every=10**9)
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0],                          # ℓ 3, accepted 1: slots 0 (yes), 1 (no)
                      [1.0, 1.0, float("-inf"), float("-inf")]])     # ℓ 2, accepted 2: slots 0, 1 (both yes)
    cal.observe(z, torch.tensor([3, 2]), torch.tensor([1, 2]))
    assert [cal.num_observed(k) for k in range(4)] == [2, 2, 0, 0]
    assert cal._y[1, :2].tolist() == [0.0, 1.0] and cal._y[0, :2].tolist() == [1.0, 1.0]


def test_the_prior_holds_a_position_with_few_observations():
    gen = torch.Generator().manual_seed(2)
    z, lens, acc = _rounds(torch.tensor([6.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64), 8, gen)
    strong = OnlineCalibration(torch.tensor([1.5]), refit_every=1, prior_samples=256.0)
    weak = OnlineCalibration(torch.tensor([1.5]), refit_every=1, prior_samples=0.5)
    strong.observe(z, lens, acc)
    weak.observe(z, lens, acc)
    assert abs(float(strong.temperatures[0]) - 1.5) < 0.3 and abs(float(strong.biases[0])) < 0.3
    assert abs(float(weak.biases[0])) > abs(float(strong.biases[0]))


def test_calibration_changes_only_at_a_refit():
    cal = OnlineCalibration(torch.ones(2), refit_every=3)
    z = torch.full((16, 2), 4.0)
    rejected = torch.zeros(16, dtype=torch.int64)
    for step in range(1, 4):
        refitted = cal.observe(z, torch.full((16,), 2), rejected)
        assert refitted == (step == 3)
        if step < 3:
            assert cal.temperatures.tolist() == [1.0, 1.0] and cal.biases.tolist() == [0.0, 0.0]
    assert float(cal.confidence(z)[0, 0]) < 0.2          # every confident slot-0 draft was rejected


def test_shifted_logits_reproduce_the_confidence_through_temperatures():
    """The worker feeds ops that take temperatures only with z + b·T: σ((z + b·T) / T) = σ(z / T + b)."""
    cal = OnlineCalibration(torch.tensor([0.5, 2.0]))
    cal.temperatures, cal.biases = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor([1.0, -0.5], dtype=torch.float64)
    z = torch.tensor([[0.3, -1.2], [2.0, 0.1]])
    shifted = z + (cal.biases * cal.temperatures).float()
    via_ops = torch.sigmoid(shifted / cal.temperatures.float())
    torch.testing.assert_close(via_ops.double(), cal.confidence(z), rtol=1e-6, atol=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="window"):
        OnlineCalibration(torch.ones(2), window=0)
    with pytest.raises(ValueError, match="prior_samples"):
        OnlineCalibration(torch.ones(2), prior_samples=0.0)
