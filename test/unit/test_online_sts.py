"""OnlineTemperatures (dspark_sglang.calibration.online_sts): per-position temperatures from verify outcomes."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.calibration.online_sts import OnlineTemperatures


def _rounds(true_t: torch.Tensor, num: int, gen: torch.Generator, verify_lens=None, z_mean=2.0):
    """Synthetic verify rounds whose slot k is accepted with prob σ(z_k / true_t[k]) given its prefix."""
    gamma = true_t.numel()
    z = torch.randn(num, gamma, generator=gen, dtype=torch.float64) * 2.0 + z_mean           # [N, γ]
    accept = torch.rand(num, gamma, generator=gen, dtype=torch.float64) < torch.sigmoid(z / true_t)
    lens = torch.full((num,), gamma, dtype=torch.int64) if verify_lens is None else verify_lens
    prefix = torch.cumprod(accept.to(torch.int64), dim=1)                                    # [N, γ]
    accepted = torch.minimum(prefix.sum(1), lens)                                            # [N]
    return z, lens, accepted


def test_recovers_the_temperatures_that_generated_the_outcomes():
    gen = torch.Generator().manual_seed(0)
    true_t = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    cal = OnlineTemperatures(torch.ones(4), window=4096, refit_every=1000, prior_samples=0.0)
    for _ in range(40):
        z, lens, acc = _rounds(true_t, 200, gen)
        cal.observe(z, lens, acc)
    cal.refit()
    assert cal.num_observed(0) == 4096 and cal.num_observed(3) > 500
    assert torch.allclose(cal.temperatures, true_t, rtol=0.2), cal.temperatures


def test_selected_slots_still_calibrate():
    """The scheduler verifies only confident requests (here: z_1 > 2, whole block); the fit on what it
    verified still recovers the temperatures (selection on z, not on the outcome)."""
    gen = torch.Generator().manual_seed(1)
    true_t = torch.tensor([2.0, 3.0], dtype=torch.float64)
    cal = OnlineTemperatures(torch.ones(2), window=8192, refit_every=1000, prior_samples=0.0)
    for _ in range(40):
        z, _, _ = _rounds(true_t, 400, gen, z_mean=1.0)
        lens = torch.where(z[:, 0] > 2.0, 2, 0)
        accept = torch.rand(z.shape, generator=gen, dtype=torch.float64) < torch.sigmoid(z / true_t)
        accepted = torch.minimum(torch.cumprod(accept.to(torch.int64), 1).sum(1), lens)
        cal.observe(z, lens, accepted)
    cal.refit()
    assert torch.allclose(cal.temperatures, true_t, rtol=0.25), cal.temperatures


def test_only_outcome_revealing_slots_are_observed():
    """Slot k counts iff it was verified (k < ℓ) and its prefix was accepted (k ≤ accepted); undrafted
    slots (−inf logits) never count."""
    cal = OnlineTemperatures(torch.ones(4), refit_every=10**9)
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0],        # ℓ 3, accepted 1: slots 0 (yes), 1 (no) observed
                      [1.0, 1.0, float("-inf"), float("-inf")]])   # ℓ 2, accepted 2: slots 0, 1 (both yes)
    cal.observe(z, torch.tensor([3, 2]), torch.tensor([1, 2]))
    assert [cal.num_observed(k) for k in range(4)] == [2, 2, 0, 0]
    assert cal._y[1, :2].tolist() == [0.0, 1.0] and cal._y[0, :2].tolist() == [1.0, 1.0]


def test_the_prior_holds_a_position_with_few_observations():
    gen = torch.Generator().manual_seed(2)
    cal = OnlineTemperatures(torch.tensor([1.5]), refit_every=1, prior_samples=64.0)
    z, lens, acc = _rounds(torch.tensor([6.0], dtype=torch.float64), 8, gen)
    cal.observe(z, lens, acc)
    assert abs(float(cal.temperatures[0]) - 1.5) < 0.75
    free = OnlineTemperatures(torch.tensor([1.5]), refit_every=1, prior_samples=0.0)
    free.observe(z, lens, acc)
    assert abs(float(free.temperatures[0]) - 1.5) > abs(float(cal.temperatures[0]) - 1.5)


def test_temperatures_change_only_at_a_refit():
    cal = OnlineTemperatures(torch.ones(2), refit_every=3, prior_samples=0.0)
    z = torch.full((16, 2), 4.0)
    rejected = torch.zeros(16, dtype=torch.int64)
    for step in range(1, 4):
        cal.observe(z, torch.full((16,), 2), rejected)
        if step < 3:
            assert cal.temperatures.tolist() == [1.0, 1.0]
    assert float(cal.temperatures[0]) > 4.0          # every confident slot-0 draft was rejected


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="window"):
        OnlineTemperatures(torch.ones(2), window=0)
