"""`DraftGate`: whether a decode step drafts at all — the part of the step cost Algorithm 1 does not see.

Algorithm 1 maximises Θ = τ·SPS(B) over the verify rows B of a step whose drafts already exist. Drafting
itself (the drafter forward, the survival and plan ops, the wider verify bookkeeping) costs time that
no verify budget earns back when drafts are rarely accepted: on a CPU host at high concurrency a plain
decode step (one row per request, no drafter) commits tokens faster. Before each step the gate
compares, from past steps only:

    drafted step: R·(1 + g) tokens in  1/SPS(R·(1 + b)) + R·o_d + s_d  seconds
    plain step:   R         tokens in  1/SPS(R)         + R·o_p + s_p  seconds

g and b are the accepted and the verified drafts per request, SPS the step's table (the serving worker
passes `ContextCost.step_table`: the profile's SPS(B) plus the attention over the batch's committed
context), o_d and o_p the measured step time beyond the SPS prediction per request, and s the serving
engine's own time between two decode steps (scheduling, output processing), measured separately after
drafted steps (s_d, which stream more tokens per request) and after plain ones (s_p). o_d, o_p and s are exponential moving
averages over steps (weight `alpha`); o_d and o_p are kept per class of request count (1, 2-3, 4-7,
8-15, ...): part of a step's extra cost is fixed, so divided by R it reads large at a few requests, and
a single average carried the drafted-step overhead of a server's ramp-up (11 ms per request, measured
at a few requests) to sixteen, where it is 3-4 ms. g and b are pooled over the last ~`memory` request-drafts
(exponentially decayed sums): a step of one request is one noisy sample (0..γ accepted), a step of 16
is sixteen. It drafts when the drafted rate, with g raised by `optimism` standard errors of its mean,
is at least the plain one. o_p starts at 0 (an optimistic guess replaced by the first plain step's
measurement), and a run of steps without the drafter is broken every `explore_every` steps by a drafted
one so g, b and o_d keep following the traffic. The serving worker's lookup-only steps (a plain step that
verifies prompt-lookup blocks instead) are not priced here but count toward that run
(`record_lookup_only`): in coding traffic nearly every plain step finds a lookup block, and before they
counted the gate never explored again — at 16 requests it kept a drafted-step overhead measured during
start-up (11 ms per request, ≈ 3× the real one) for the rest of the run.

Why pooled and optimistic: the gate only learns g from steps it chose to draft. With a per-step moving
average, one unlucky drafted step drops g below the break-even point and the gate then stays plain,
sampling g again only once per `explore_every` steps; at one request and a drafter 10 % better than
plain decoding it drafted 14 % of the steps and reached 0.93 of the better rate (simulated with the
measured step times). Pooling over request-drafts and deciding on an upper confidence bound keeps
drafting while the evidence against it is weak, and many requests per step shrink the bound quickly.

Warm-up: until `warmup_request_drafts` request-drafts have been recorded the gate drafts (the serving
worker sets 32): a server's first drafts run before the online calibration has refitted, and deciding on
them locked the gate on plain steps at one request (see the field).

The decision never looks at the current block, so it cannot bias which tokens are accepted: a plain
step is a verify with budget 0 for every request, and the output distribution stays the target's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dspark_sglang.scheduling.sps import sps_lookup


@dataclass
class DraftGate:
    """Per-server drafting decision; feed it every decode step with `record`.

    Example:
        >>> sps = torch.tensor([10.0] * 5 + [5.0] * 60)     # 0.1 s up to 4 rows, 0.2 s beyond
        >>> gate = DraftGate(sps)
        >>> gate.should_draft(4)                           # nothing measured yet: draft
        True
        >>> gate.record(True, num_reqs=4, verified=8, accepted=1, num_rows=12, seconds=0.2)
        >>> gate.should_draft(4)                           # 4·1.25 tokens / 0.2 s < 4 tokens / 0.1 s
        False
    """

    sps_table: torch.Tensor
    """[≥ 2] SPS(B), the same table the verify policy uses."""
    explore_every: int = 16
    """After this many steps in a row without the drafter (plain or lookup-only), draft once to refresh the
    drafted-step estimates."""
    alpha: float = 0.2
    """Weight of the newest step in the time averages (o_d, o_p, s)."""
    memory: float = 64.0
    """Request-drafts the acceptance estimates (g, b) remember (decay 1 − 1/memory per request-draft)."""
    optimism: float = 1.0
    """Standard errors of g's mean added before comparing the rates (0 = decide on the mean)."""
    warmup_request_drafts: int = 0
    """Request-drafts to observe before a plain step may be chosen. A server's first drafted steps run with
    the offline calibration; deciding on them can lock the gate on plain steps, and then the online
    calibration (refitted every 8 drafted steps) hardly ever refits: at c=1 just after start-up the gate
    drafted 4-6 % of the steps (stop-13 SLO run) and lost to static verification."""
    request_drafts_seen: int = 0
    """Request-drafts recorded so far (not decayed)."""
    accepted_sum: float = 0.0
    accepted_sq_sum: float = 0.0
    verified_sum: float = 0.0
    request_drafts: float = 0.0
    """Decayed sums over drafted steps: accepted, accepted², verified drafts and requests."""
    overhead_drafted: dict[int, float] = field(default_factory=dict)
    overhead_plain: dict[int, float] = field(default_factory=dict)
    """o_d, o_p per request-count class (`size_class`: 1, 2-3, 4-7, 8-15, ...), each a moving average; a
    class not measured yet borrows the nearest measured one's (o_p: 0 before any plain step)."""
    between_after_drafted: float | None = None
    between_after_plain: float | None = None
    """s_d, s_p: moving averages of the engine time after a drafted / a plain step."""
    plain_run: int = 0
    drafted_steps: int = 0
    plain_steps: int = 0

    def __post_init__(self) -> None:
        if self.explore_every < 1:
            raise ValueError(f"explore_every must be >= 1; got {self.explore_every}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1]; got {self.alpha}")
        if self.memory < 1.0:
            raise ValueError(f"memory must be >= 1 request-draft; got {self.memory}")
        if self.optimism < 0.0:
            raise ValueError(f"optimism must be >= 0; got {self.optimism}")
        if self.warmup_request_drafts < 0:
            raise ValueError(f"warmup_request_drafts must be >= 0; got {self.warmup_request_drafts}")

    @property
    def accepted_per_req(self) -> float | None:
        """g: mean accepted drafts per request-draft (None before a drafted step)."""
        return self.accepted_sum / self.request_drafts if self.request_drafts > 0 else None

    @property
    def verified_per_req(self) -> float | None:
        """b: mean verified drafts per request-draft (None before a drafted step)."""
        return self.verified_sum / self.request_drafts if self.request_drafts > 0 else None

    @property
    def accepted_stderr(self) -> float:
        """Standard error of g (the decayed sample count stands in for n)."""
        if self.request_drafts <= 0:
            return 0.0
        mean = self.accepted_sum / self.request_drafts
        var = max(self.accepted_sq_sum / self.request_drafts - mean * mean, 0.0)
        return (var / self.request_drafts) ** 0.5

    def _ema(self, old: float | None, new: float) -> float:
        return moving_average(old, new, self.alpha)

    def predicted_rates(self, num_reqs: int, optimism: float = 0.0,
                        table: torch.Tensor | None = None) -> tuple[float, float] | None:
        """(drafted, plain) committed tokens per second for `num_reqs` requests, g raised by `optimism`
        standard errors; None before the first drafted step has been recorded. `table`: the SPS table of
        this step's batch (`ContextCost.step_table`), default `sps_table`."""
        table = self.sps_table if table is None else table
        overhead_drafted = _nearest_class(self.overhead_drafted, num_reqs)
        if self.accepted_per_req is None or overhead_drafted is None:
            return None
        accepted = self.accepted_per_req + optimism * self.accepted_stderr
        drafted_rows = max(num_reqs, round(num_reqs * (1.0 + self.verified_per_req)))
        after_d, after_p = self.between_after_drafted, self.between_after_plain
        s_d = after_d if after_d is not None else (after_p or 0.0)     # one kind unseen: assume the other's
        s_p = after_p if after_p is not None else (after_d or 0.0)
        overhead_plain = _nearest_class(self.overhead_plain, num_reqs) or 0.0
        drafted_s = 1.0 / sps_lookup(table, drafted_rows) + num_reqs * overhead_drafted + s_d
        plain_s = 1.0 / sps_lookup(table, num_reqs) + num_reqs * overhead_plain + s_p
        return (num_reqs * (1.0 + accepted) / max(drafted_s, 1e-9),
                num_reqs / max(plain_s, 1e-9))

    def should_draft(self, num_reqs: int, table: torch.Tensor | None = None) -> bool:
        """Whether the next step of `num_reqs` requests should draft (from recorded steps only); `table` as
        in `predicted_rates`."""
        rates = self.predicted_rates(num_reqs, self.optimism, table)
        warming_up = self.request_drafts_seen < self.warmup_request_drafts
        if rates is None or self.plain_run >= self.explore_every or warming_up:
            return True
        return rates[0] >= rates[1]

    def record_between_steps(self, seconds: float, after_drafted: bool) -> None:
        """Engine time from the end of one decode step to the start of the next (no prefill between);
        `after_drafted`: whether the earlier step drafted."""
        if after_drafted:
            self.between_after_drafted = self._ema(self.between_after_drafted, seconds)
        else:
            self.between_after_plain = self._ema(self.between_after_plain, seconds)

    def record_lookup_only(self) -> None:
        """A step that ran without the drafter but is not a plain step (it verified prompt-lookup blocks):
        nothing to price, but it extends the run of steps that did not refresh the drafted estimates."""
        self.plain_run += 1

    def record(self, drafted: bool, *, num_reqs: int, verified: int, accepted: int, num_rows: int,
               seconds: float, accepted_sq: float | None = None, table: torch.Tensor | None = None) -> None:
        """One finished decode step: whether it drafted, its verified / accepted drafts (summed over
        the `num_reqs` requests), its verify rows and its measured wall time. `accepted_sq` is the sum
        over requests of accepted², for g's spread (default: every request accepted the mean). `table`:
        the SPS table the step was priced with (default `sps_table`); o_d and o_p are what it left out."""
        if num_reqs <= 0:
            return
        table = self.sps_table if table is None else table
        overhead = (seconds - 1.0 / sps_lookup(table, num_rows)) / num_reqs
        cls = size_class(num_reqs)
        if drafted:
            decay = (1.0 - 1.0 / self.memory) ** num_reqs
            if accepted_sq is None:
                accepted_sq = accepted * accepted / num_reqs
            self.accepted_sum = decay * self.accepted_sum + accepted
            self.accepted_sq_sum = decay * self.accepted_sq_sum + accepted_sq
            self.verified_sum = decay * self.verified_sum + verified
            self.request_drafts = decay * self.request_drafts + num_reqs
            self.request_drafts_seen += num_reqs
            self.overhead_drafted[cls] = self._ema(self.overhead_drafted.get(cls), overhead)
            self.plain_run = 0
            self.drafted_steps += 1
        else:
            self.overhead_plain[cls] = self._ema(self.overhead_plain.get(cls), overhead)
            self.plain_run += 1
            self.plain_steps += 1


def moving_average(old: float | None, new: float, alpha: float) -> float:
    """Exponential moving average with weight `alpha` on `new`; `new` itself when there is no `old` yet."""
    return new if old is None else (1.0 - alpha) * old + alpha * new


def size_class(num_reqs: int) -> int:
    """⌊log2 R⌋: the class of the step overheads o_d, o_p (1 -> 0, 2-3 -> 1, 4-7 -> 2, 8-15 -> 3, ...)."""
    return max(int(num_reqs), 1).bit_length() - 1


def _nearest_class(by_class: dict[int, float], num_reqs: int) -> float | None:
    """The value of `num_reqs`'s class, else of the nearest measured class (the larger on a tie); None if none."""
    if not by_class:
        return None
    cls = size_class(num_reqs)
    return by_class[min(by_class, key=lambda c: (abs(c - cls), -c))]
