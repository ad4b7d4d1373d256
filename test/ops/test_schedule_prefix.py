"""schedule_prefix / schedule_topk: parity, the paper's worked logic by hand, and the properties
Algorithm 1 promises (causal early stop, Θ(global) ≥ Θ(early_stop), min_len, prefix consistency)."""
from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from dspark_sglang.ops import native
from dspark_sglang.ops.reference import schedule_prefix_ref, schedule_topk_ref
from test.conftest import DEVICES
from test.ops.op_inputs import sps_table, survival

MODES = ["early_stop", "global"]


def _prefix(*args):
    return torch.ops.dspark.schedule_prefix(*args)


def _topk(*args):
    return torch.ops.dspark.schedule_topk(*args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_reqs", [1, 7, 99, 257])
@pytest.mark.parametrize("gamma", [1, 4, 7, 16])
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(device, num_reqs, gamma, mode):
    assert native.has_kernel("schedule_prefix", device) and native.has_kernel("schedule_topk", device)
    surv = survival(num_reqs, gamma, device)
    surv[0] = 0.5                                              # exact ties: the order rule decides
    surv[0, 1:] = 0.25 if gamma > 1 else 0.5
    min_len, max_len = (1, gamma) if gamma > 1 else (0, 1)
    table = sps_table(num_reqs * (gamma + 1) + 1, device=device)
    lens, theta = _prefix(surv, table, min_len, max_len, mode)
    lens_ref, theta_ref = schedule_prefix_ref(surv.cpu(), table.cpu(), min_len, max_len, mode)
    assert torch.equal(lens.cpu(), lens_ref)
    torch.testing.assert_close(theta.cpu(), theta_ref, rtol=1e-12, atol=0)
    budget = num_reqs * (min_len + 1) + 3
    assert torch.equal(_topk(surv, budget, min_len, max_len).cpu(),
                       schedule_topk_ref(surv.cpu(), budget, min_len, max_len))
    if num_reqs == 7 and gamma == 4:
        opcheck(torch.ops.dspark.schedule_prefix.default, (surv, table, min_len, max_len, mode))
        opcheck(torch.ops.dspark.schedule_topk.default, (surv, budget, min_len, max_len))


# Worked example (hand-computed). Survivals, candidate order by a desc:
#   (r0,j0)=0.75, (r0,j1)=0.5, (r1,j0)=0.5, (r0,j2)=0.25, (r1,j1)=0.125, (r1,j2)=0.0625
# SPS(B): B=2,3 -> 100; B>=4 -> 70 (a jagged step: the 4th verify row costs a new tile).
#   start: τ*=2, B=2, Θ=200
#   +0.75 -> τ*=2.75, B=3, Θ=275   improves: keep (ℓ0=1)
#   +0.5  -> τ*=3.25, B=4, Θ=227.5 worse: early_stop ends here -> ℓ=[1,0], Θ=275
#   +0.5  -> τ*=3.75, B=5, Θ=262.5
#   +0.25 -> τ*=4.0,  B=6, Θ=280   global best so far
#   +0.125-> τ*=4.125,B=7, Θ=288.75
#   +0.0625->τ*=4.1875,B=8,Θ=293.125 global best: everything -> ℓ=[3,3]
WORKED_SURVIVAL = [[0.75, 0.5, 0.25], [0.5, 0.125, 0.0625]]
WORKED_SPS = [0.0, 100.0, 100.0, 100.0, 70.0, 70.0, 70.0, 70.0, 70.0]


@pytest.mark.parametrize("device", DEVICES)
def test_worked_example(device):
    surv = torch.tensor(WORKED_SURVIVAL, device=device)
    sps = torch.tensor(WORKED_SPS, device=device, dtype=torch.float64)
    lens, theta = _prefix(surv, sps, 0, 3, "early_stop")
    assert lens.tolist() == [1, 0] and theta.item() == 275.0
    lens, theta = _prefix(surv, sps, 0, 3, "global")
    assert lens.tolist() == [3, 3] and theta.item() == 293.125
    # min_len 1: both anchors' first drafts are pre-admitted: τ*=2+0.75+0.5=3.25, B=4, Θ=227.5;
    # next (r0,j1)=0.5 -> 3.75·70=262.5 improves; (r0,j2)=0.25 -> 4.0·70=280; (r1,j1)=.125 -> 288.75; ...
    lens, theta = _prefix(surv, sps, 1, 3, "early_stop")
    assert lens.tolist() == [3, 3] and theta.item() == 293.125
    # max_len 1 caps every request at one draft: Θ after (r0,j0) = 275, after (r1,j0) = 227.5
    lens, theta = _prefix(surv, sps, 0, 1, "global")
    assert lens.tolist() == [1, 0] and theta.item() == 275.0
    # top-K: the tie at 0.5 breaks on the earlier slot, so (r1,j0) comes before (r0,j1).
    assert _topk(surv, 2, 0, 3).tolist() == [1, 1]
    assert _topk(surv, 3, 0, 3).tolist() == [2, 1]
    assert _topk(surv, 100, 0, 3).tolist() == [3, 3]
    assert _topk(surv, 0, 1, 3).tolist() == [1, 1]        # budget below R·min_len: min_len still holds


@pytest.mark.parametrize("device", DEVICES)
def test_zero_survival_is_never_admitted(device):
    surv = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5]], device=device)
    sps = torch.full((9,), 100.0, device=device)       # flat SPS: every positive candidate improves Θ
    lens, theta = _prefix(surv, sps, 0, 3, "global")
    assert lens.tolist() == [1, 3]
    assert theta.item() == pytest.approx((2 + 1.0 + 1.5) * 100)


@pytest.mark.parametrize("device", DEVICES)
def test_early_stop_is_causal(device):
    """Lowering survivals past each request's stop point (slots > ℓ_r) never changes the plan: the
    decision to verify slot k never depends on the realisation at slots after it (paper §3.2.2)."""
    gen = torch.Generator().manual_seed(5)
    for trial in range(50):
        num_reqs, gamma = 1 + trial % 13, 7
        surv = survival(num_reqs, gamma, generator=gen)
        table = sps_table(num_reqs * (gamma + 1) + 1, generator=gen)
        lens, theta = _prefix(surv.to(device), table.to(device), 0, gamma, "early_stop")
        lens = lens.cpu()
        changed = surv.clone()
        for r, length in enumerate(lens.tolist()):
            if length + 1 < gamma:
                factors = torch.rand(gamma - length - 1, generator=gen).cumprod(0)
                changed[r, length + 1:] = changed[r, length] * factors
        assert torch.all(changed[:, 1:] <= changed[:, :-1])
        lens2, theta2 = _prefix(changed.to(device), table.to(device), 0, gamma, "early_stop")
        assert torch.equal(lens2.cpu(), lens) and theta2.item() == theta.item()


@pytest.mark.parametrize("device", DEVICES)
def test_properties_on_random_batches(device):
    gen = torch.Generator().manual_seed(9)
    for trial in range(60):
        num_reqs, gamma = 1 + trial % 37, 1 + trial % 9
        min_len = trial % (gamma + 1)
        max_len = min_len + (trial // 3) % (gamma - min_len + 1)
        surv = survival(num_reqs, gamma, device, generator=gen)
        table = sps_table(num_reqs * (gamma + 1) + 1, jagged=trial % 2 == 0, device=device, generator=gen)
        early, theta_early = _prefix(surv, table, min_len, max_len, "early_stop")
        best, theta_global = _prefix(surv, table, min_len, max_len, "global")
        assert theta_global.item() >= theta_early.item()
        for lens in (early, best):
            assert bool(((lens >= min_len) & (lens <= max_len)).all())
        # The admitted set {(r, j): min_len <= j < ℓ_r} is the head of the admission order:
        # every admitted survival >= every candidate left out.
        slots = torch.arange(gamma, device=device)
        cand = (slots >= min_len) & (slots < max_len) & (surv > 0)
        admitted = cand & (slots < best.unsqueeze(1))
        left = cand & ~admitted
        if admitted.any() and left.any():
            assert surv[admitted].min() >= surv[left].max()


@pytest.mark.parametrize("device", DEVICES)
def test_topk_spends_exactly_the_budget(device):
    gen = torch.Generator().manual_seed(3)
    surv = survival(20, 7, device, generator=gen)
    for budget in [0, 5, 20, 47, 140, 1000]:
        lens = _topk(surv, budget, 1, 6)
        assert int(lens.sum()) == min(max(budget, 20), 20 * 6)
