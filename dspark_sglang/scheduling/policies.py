"""Verify-length policies: survivals a_{r,j} + an SPS(B) table -> ℓ_r per request (DSpark §3.2.2).

All four are pure functions of their tensor arguments and call the extension's scheduler ops:

* ``static``      every request verifies ``max_len`` drafts (the whole block);
* ``threshold``   the leading drafts whose calibrated confidence c_k >= threshold
                  (`ops.confidence_survival`'s threshold lengths), clipped to [min_len, max_len];
* ``alg1``        DSpark Algorithm 1 with the lossless early stop (`ops.schedule_prefix`, early_stop);
* ``lagged-topk`` the production variant: the total budget K is the Σℓ of the global Θ-argmax plan
                  over survivals from two steps earlier (`ops.schedule_prefix`, global), then the
                  top-K current survivals get verified (`ops.schedule_topk`). K does not depend on
                  the current block, which keeps it lossless.
"""
from __future__ import annotations

from collections import deque
from typing import Hashable, Iterable

import torch

from dspark_sglang import ops
from dspark_sglang.scheduling.sps import extend_table

POLICIES = ("static", "threshold", "alg1", "lagged-topk")


def lagged_budget(lagged_survival: torch.Tensor, sps_table: torch.Tensor, min_len: int, max_len: int) -> int:
    """K = Σ_r ℓ_r of the Θ-argmax plan over older survivals ([R, γ] float32)."""
    lens, _ = ops.schedule_prefix(lagged_survival, sps_table, min_len, max_len, mode="global")
    return int(lens.sum())  # sync: the budget is a host int


def plan_verify_lens(policy: str, survival: torch.Tensor, threshold_lens: torch.Tensor, sps_table: torch.Tensor,
                     min_len: int, max_len: int, lagged_survival: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, float | None]:
    """Verify lengths for one step.

    Args:
        policy:          one of POLICIES.
        survival:        [R, γ] float32 a_{r,j} = Π_{i≤j} c_{r,i}, non-increasing along j.
        threshold_lens:  [R] int32 leading slots with c >= threshold (from `ops.confidence_survival`).
        sps_table:       [≥ 2] float SPS(B); extended linearly in step time if shorter than R·(max_len+1)+1.
        min_len, max_len: 0 ≤ min_len ≤ max_len ≤ γ.
        lagged_survival: [R, γ] float32 survivals of the same requests two steps earlier (lagged-topk only).

    Returns:
        verify_lens [R] int32 in [min_len, max_len], and Θ of the plan (tokens/s) where the policy
        computes it (alg1), else None.

    Example:
        >>> a = torch.tensor([[0.75, 0.5]]); sps = torch.tensor([9., 9., 8., 4.])
        >>> plan_verify_lens("alg1", a, torch.tensor([1], dtype=torch.int32), sps, 0, 2)[0].tolist()
        [1]
    """
    num_reqs = survival.shape[0]
    if policy == "static":
        return torch.full((num_reqs,), max_len, dtype=torch.int32, device=survival.device), None
    if policy == "threshold":
        return threshold_lens.clamp(min_len, max_len).to(torch.int32), None
    table = extend_table(sps_table.double(), num_reqs * (max_len + 1))
    if policy == "alg1":
        lens, theta = ops.schedule_prefix(survival, table, min_len, max_len, mode="early_stop")
        return lens, float(theta)
    if policy == "lagged-topk":
        if lagged_survival is None or lagged_survival.shape != survival.shape:
            raise ValueError(f"lagged-topk needs lagged_survival of shape {tuple(survival.shape)}; got "
                             f"{None if lagged_survival is None else tuple(lagged_survival.shape)}")
        budget = lagged_budget(lagged_survival, table, min_len, max_len)
        return ops.schedule_topk(survival, budget, min_len, max_len), None
    raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {policy!r}")


def admission_floor(policy: str, sps_table: torch.Tensor, num_reqs: int, min_len: int, max_len: int) -> float:
    """A survival at or below which `policy` never verifies a slot beyond min_len (0 = no such bound).

    alg1 admits a candidate of survival a at B rows only if (τ + a)·SPS(B+1) > τ·SPS(B), i.e.
    a > τ·(SPS(B)/SPS(B+1) − 1), with τ ≥ R (every request commits its anchor) and B in
    [R(1+min_len), R(1+max_len)); candidates come in descending a, so once one fails the rest fail
    too. Hence a ≤ R·min_B (SPS(B)/SPS(B+1) − 1) is never admitted, and drafting it is wasted
    (`DSparkDrafter.propose(survival_floor=...)`). A 1e-6 relative margin absorbs float differences.
    The other policies verify by confidence alone (or everything): 0.

    Example:
        >>> sps = torch.tensor([10., 10., 9., 8., 7., 6., 5.])    # SPS(B), B = 0..6
        >>> round(admission_floor("alg1", sps, 2, 0, 2), 4)       # B = 2..5: min ratio 9/8 − 1, times R = 2
        0.25
    """
    if policy != "alg1" or max_len <= min_len:
        return 0.0
    table = extend_table(sps_table.double(), num_reqs * (max_len + 1))
    b = torch.arange(num_reqs * (1 + min_len), num_reqs * (1 + max_len), device=table.device)
    ratio = table[b] / table[b + 1] - 1.0
    return max(0.0, float(num_reqs * ratio.min()) * (1.0 - 1e-6))


MIN_PRUNING_FLOOR = 0.02
"""Drafting skips slots below alg1's admission floor (`_propose_pruned`) only from this floor up. Below it
almost no slot falls under the floor, and the pruned path's per-slot loop only adds work: the shipped drafter,
bf16, 2-core EPYC (`benchmark/kernels/bench_drafter.py --reqs 1,2,4,8,16`): floors 0.0002 / 0.0003 / 0.0007 at
1 / 2 / 4 requests prune nothing and cost 4.35 / 6.51 / 9.97 ms against 3.67 / 4.85 / 6.13 ms unpruned; from
8 requests (floor ≈ 0.07, 40 % of slots pruned) both cost about the same there, and pruning pays on hosts
whose draft-head rows are dearer."""


def pruning_floor(policy: str, sps_table: torch.Tensor, num_reqs: int, min_len: int, max_len: int) -> float:
    """The survival floor drafting should prune at: `admission_floor`, or 0 (draft every slot) when that
    floor is below `MIN_PRUNING_FLOOR`.

    Example:
        >>> flat = torch.tensor([30., 30., 29.9, 29.8, 29.7, 29.6, 29.5])   # nearly flat SPS(B): a tiny floor
        >>> pruning_floor("alg1", flat, 1, 0, 2)
        0.0
        >>> sps = torch.tensor([10., 10., 9., 8., 7., 6., 5.])
        >>> round(pruning_floor("alg1", sps, 2, 0, 2), 4)
        0.25
    """
    floor = admission_floor(policy, sps_table, num_reqs, min_len, max_len)
    return floor if floor >= MIN_PRUNING_FLOOR else 0.0


class LaggedBudget:
    """Per-request survival history for lagged-topk: the rows of two steps ago.

    A request with fewer than `lag` past rows gets the mean of the lagged rows of the others (ones
    when there are none): a prior that does not look at its current block.
    """

    def __init__(self, lag: int = 2) -> None:
        self.lag = lag
        self._history: dict[Hashable, deque] = {}

    def lagged_rows(self, keys: Iterable[Hashable], gamma: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """[R, γ] float32 survivals from `lag` steps earlier (prior for requests without them)."""
        keys = list(keys)
        rows = [self._history.get(k) for k in keys]
        known = [h[0] for h in rows if h is not None and len(h) == self.lag]
        prior = torch.stack(known).mean(0) if known else torch.ones(gamma)
        out = [h[0] if h is not None and len(h) == self.lag else prior for h in rows]
        return torch.stack(out).to(device=device, dtype=torch.float32) if out else torch.empty(0, gamma)

    def push(self, keys: Iterable[Hashable], survival: torch.Tensor) -> None:
        """Record this step's survivals ([R, γ]) of `keys`."""
        cpu = survival.detach().float().cpu()
        for key, row in zip(keys, cpu):
            self._history.setdefault(key, deque(maxlen=self.lag)).append(row)

    def drop(self, key: Hashable) -> None:
        self._history.pop(key, None)

    def __len__(self) -> int:
        return len(self._history)
