"""Verify-length policies (dspark_sglang.scheduling.policies): pure functions over survivals + SPS."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.scheduling import MIN_PRUNING_FLOOR, LaggedBudget, admission_floor, plan_verify_lens, pruning_floor
from dspark_sglang.scheduling.policies import lagged_budget

I32 = torch.int32


def test_static_verifies_the_whole_block():
    a = torch.rand(3, 4)
    lens, theta = plan_verify_lens("static", a, torch.zeros(3, dtype=I32), torch.ones(2), 0, 4)
    assert lens.tolist() == [4, 4, 4] and lens.dtype == I32 and theta is None


def test_static_respects_max_verify():
    lens, _ = plan_verify_lens("static", torch.rand(2, 4), torch.zeros(2, dtype=I32), torch.ones(2), 0, 3)
    assert lens.tolist() == [3, 3]


def test_threshold_clips_to_bounds():
    """threshold lens [3, 0, 1] clipped to [1, 2] -> [2, 1, 1]."""
    lens, _ = plan_verify_lens("threshold", torch.rand(3, 4), torch.tensor([3, 0, 1], dtype=I32),
                               torch.ones(2), 1, 2)
    assert lens.tolist() == [2, 1, 1]


def test_alg1_hand_worked():
    """a = [[0.75, 0.5]], SPS = [9, 9, 8, 4]:
    start B=1, τ=1, Θ=9; admit (0,0): τ=1.75, B=2, Θ=14 > 9 keep; admit (0,1): τ=2.25, B=3, Θ=9 ≤ 14 stop."""
    lens, theta = plan_verify_lens("alg1", torch.tensor([[0.75, 0.5]]), torch.zeros(1, dtype=I32),
                                   torch.tensor([9.0, 9.0, 8.0, 4.0]), 0, 2)
    assert lens.tolist() == [1] and theta == pytest.approx(14.0)


def test_alg1_flat_sps_verifies_every_positive_survival():
    """With SPS constant, every admission with a > 0 raises Θ, so Alg. 1 verifies all of them."""
    a = torch.tensor([[0.9, 0.5, 0.0], [0.2, 0.1, 0.05]])
    lens, _ = plan_verify_lens("alg1", a, torch.zeros(2, dtype=I32), torch.ones(10), 0, 3)
    assert lens.tolist() == [2, 3]


def test_alg1_table_shorter_than_batch_is_extended():
    """A table covering B ≤ 2 still plans R=4, γ=4 (extended linearly in step time)."""
    a = torch.full((4, 4), 0.9)
    lens, _ = plan_verify_lens("alg1", a, torch.zeros(4, dtype=I32), torch.tensor([10.0, 10.0, 9.0]), 0, 4)
    assert lens.shape == (4,) and int(lens.min()) >= 0 and int(lens.max()) <= 4


def test_alg1_decision_ignores_unadmitted_survivals():
    """Losslessness (Alg. 1 early stop): lowering survivals the plan did not admit leaves the plan unchanged,
    i.e. "ℓ_r ≥ k" never depends on a_{r,k+1} beyond the admitted prefix."""
    gen = torch.Generator().manual_seed(0)
    sps = torch.tensor([20.0, 20, 19, 18, 16, 13, 11, 9, 8, 7, 6, 5, 4, 3.5, 3, 2.8, 2.6])
    for _ in range(50):
        a = torch.rand(3, 4, generator=gen).sort(dim=1, descending=True).values.cumprod(dim=1)
        lens, _ = plan_verify_lens("alg1", a, torch.zeros(3, dtype=I32), sps, 0, 4)
        lowered = a.clone()
        for r, n in enumerate(lens.tolist()):
            lowered[r, n:] *= torch.rand(4 - n, generator=gen)
        lowered = lowered.cummin(dim=1).values
        assert plan_verify_lens("alg1", lowered, torch.zeros(3, dtype=I32), sps, 0, 4)[0].tolist() == lens.tolist()


def test_lagged_topk_hand_worked():
    """Lagged a = [[.9, .8], [.1, .05]], SPS(B=0..6) = [10, 10, 10, 9, 8, 5, 4]:
    B=2 τ=2 Θ=20 -> +.9: B=3 Θ=26.1 -> +.8: B=4 τ=3.7 Θ=29.6 -> +.1: B=5 Θ=19 -> +.05: B=6 Θ=15.4;
    global argmax after 2 admissions: K = 2. Current a = [[.2, .1], [.9, .85]]: top-2 are request 1's."""
    sps = torch.tensor([10.0, 10, 10, 9, 8, 5, 4])
    lagged = torch.tensor([[0.9, 0.8], [0.1, 0.05]])
    assert lagged_budget(lagged, sps, 0, 2) == 2
    current = torch.tensor([[0.2, 0.1], [0.9, 0.85]])
    lens, theta = plan_verify_lens("lagged-topk", current, torch.zeros(2, dtype=I32), sps, 0, 2, lagged)
    assert lens.tolist() == [0, 2] and theta is None


def test_lagged_topk_budget_independent_of_current_block():
    sps = torch.tensor([10.0, 10, 10, 9, 8, 5, 4])
    lagged = torch.tensor([[0.9, 0.8], [0.1, 0.05]])
    for current in (torch.rand(2, 2).sort(1, descending=True).values for _ in range(10)):
        lens, _ = plan_verify_lens("lagged-topk", current, torch.zeros(2, dtype=I32), sps, 0, 2, lagged)
        assert int(lens.sum()) == 2


def test_lagged_topk_needs_history_shape():
    with pytest.raises(ValueError, match="lagged_survival"):
        plan_verify_lens("lagged-topk", torch.rand(2, 3), torch.zeros(2, dtype=I32), torch.ones(9), 0, 3, None)


def test_unknown_policy():
    with pytest.raises(ValueError, match="policy must be one of"):
        plan_verify_lens("greedy", torch.rand(1, 2), torch.zeros(1, dtype=I32), torch.ones(4), 0, 2)


def test_lagged_history_two_steps_and_prior():
    """Rows come from two pushes earlier; a request without them gets the mean of the others' (ones if none)."""
    hist = LaggedBudget(lag=2)
    assert hist.lagged_rows(["a"], 2).tolist() == [[1.0, 1.0]]
    hist.push(["a"], torch.tensor([[0.5, 0.25]]))
    hist.push(["a"], torch.tensor([[0.9, 0.8]]))
    rows = hist.lagged_rows(["a", "b"], 2)
    assert rows.tolist() == [[0.5, 0.25], [0.5, 0.25]]
    hist.push(["a"], torch.tensor([[0.1, 0.0]]))
    assert hist.lagged_rows(["a"], 2).tolist() == [[pytest.approx(0.9), pytest.approx(0.8)]]
    hist.drop("a")
    assert len(hist) == 0


def test_admission_floor_never_changes_an_alg1_plan():
    """Survivals at or below admission_floor are never admitted: zeroing them (what the drafter's pruned
    propose reports) leaves every plan unchanged; with min_len the first slots are kept regardless. And the
    bound is not vacuous: on these tables it prunes slots."""
    gen = torch.Generator().manual_seed(1)
    pruned_any = False
    for trial in range(300):
        num_reqs, gamma = int(torch.randint(1, 9, (1,), generator=gen)), 5
        min_len = int(trial % 3 == 0)
        steps = 0.05 + torch.rand(num_reqs * (gamma + 1) + 1, generator=gen).cumsum(0) * 0.004   # step time ↑
        sps = 1.0 / steps
        a = torch.rand(num_reqs, gamma, generator=gen).pow(0.3).cumprod(dim=1)
        floor = admission_floor("alg1", sps, num_reqs, min_len, gamma)
        assert floor > 0
        lens, _ = plan_verify_lens("alg1", a, torch.zeros(num_reqs, dtype=I32), sps, min_len, gamma)
        cut = a.clone()
        cut[:, min_len:][a[:, min_len:] <= floor] = 0.0
        pruned_any |= bool((cut != a).any())
        assert plan_verify_lens("alg1", cut, torch.zeros(num_reqs, dtype=I32), sps, min_len, gamma)[0].tolist() \
            == lens.tolist()
    assert pruned_any
    assert admission_floor("static", sps, 4, 0, 5) == 0.0 and admission_floor("lagged-topk", sps, 4, 0, 5) == 0.0
    flat = torch.full((64,), 10.0)
    assert admission_floor("alg1", flat, 4, 0, 5) == 0.0          # flat SPS: every positive survival is admitted


def test_pruning_floor_drops_floors_that_prune_nothing():
    """The worker prunes at alg1's admission floor only from MIN_PRUNING_FLOOR up: a nearly flat SPS(B) (one
    request on a memory-bound host) gives a floor of ~1e-3, where pruning only adds the per-slot loop; a
    steep table keeps its floor unchanged; policies without a floor stay at 0."""
    nearly_flat = 1.0 / (0.035 + 0.00003 * torch.arange(64, dtype=torch.float64))      # SPS(B), B = 0..63
    tiny = admission_floor("alg1", nearly_flat, 1, 0, 7)
    assert 0.0 < tiny < MIN_PRUNING_FLOOR
    assert pruning_floor("alg1", nearly_flat, 1, 0, 7) == 0.0
    steep = 1.0 / (0.035 + 0.004 * torch.arange(64, dtype=torch.float64))
    floor = admission_floor("alg1", steep, 8, 0, 7)
    assert floor >= MIN_PRUNING_FLOOR and pruning_floor("alg1", steep, 8, 0, 7) == floor
    assert pruning_floor("static", steep, 8, 0, 7) == 0.0
