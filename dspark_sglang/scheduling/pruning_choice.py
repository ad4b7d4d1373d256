"""`PruningChoice`: whether a drafted step prunes at alg1's admission floor, chosen by measured drafting time.

Pruned drafting (`DSparkDrafter.propose(..., survival_floor=f)`) stops drafting a request's slots once
their survival falls under the floor, so slots alg1 can never admit cost no draft-head row. It does so in
a Python loop over the block's slots (confidence, survival, masks, chunked head calls), and whether that
loop costs less than the head rows it saves depends on the host and the batch, not on the floor alone
(`benchmark/kernels/bench_drafter.py`, pruned vs unpruned, ms per `propose`, bf16):

    host                          R = 1        R = 4         R = 16
    EPYC, AVX-512 BF16 (stop 29)  4.35 / 3.67  9.97 / 6.13   19.97 / 17.61
    EPYC Zen 3, AVX2 (stop 30)    5.62 / 4.46  8.21 / 7.00   21.24 / 23.03

So the serving worker measures it: per class of request count (`draft_gate.size_class`: 1, 2-3, 4-7,
8-15, ...) it keeps a moving average of the drafting seconds per request of pruned and of unpruned steps,
samples each mode `min_samples` times first, then drafts the cheaper way, trying the other one again
every `explore_every` drafted steps of that class so that the averages follow the host and the traffic.

Lossless either way: the floor only skips slots the policy never admits, so the verify plans are the same;
the choice looks only at past steps' timings, never at the current block.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dspark_sglang.scheduling.draft_gate import size_class


@dataclass
class PruningChoice:
    """Per-server choice between pruned and unpruned drafting; feed it every drafted step with `record`.

    Example:
        >>> choice = PruningChoice(min_samples=1)
        >>> choice.should_prune(1)                     # nothing measured: try pruning first
        True
        >>> choice.record(1, pruned=True, seconds=0.0056)
        >>> choice.should_prune(1)                     # then the unpruned way once
        False
        >>> choice.record(1, pruned=False, seconds=0.0045)
        >>> choice.should_prune(1), choice.should_prune(16)   # class 1 measured; 16 not yet
        (False, True)
    """

    explore_every: int = 32
    """After this many drafted steps of a class in the chosen mode, draft once the other way."""
    alpha: float = 0.2
    """Weight of the newest step in the moving averages."""
    min_samples: int = 4
    """Steps of each mode a class samples before choosing."""
    seconds_per_req: dict[tuple[int, bool], float] = field(default_factory=dict)
    """(class, pruned) -> moving average of drafting seconds per request."""
    samples: dict[tuple[int, bool], int] = field(default_factory=dict)
    """(class, pruned) -> steps recorded."""
    since_explore: dict[int, int] = field(default_factory=dict)
    """class -> drafted steps since that class last ran the mode it did not prefer."""

    def __post_init__(self) -> None:
        if self.explore_every < 1:
            raise ValueError(f"explore_every must be >= 1; got {self.explore_every}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1]; got {self.alpha}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1; got {self.min_samples}")

    def preferred(self, num_reqs: int) -> bool | None:
        """The cheaper mode of `num_reqs`'s class (True = pruned), or None while either is under-sampled."""
        cls = size_class(num_reqs)
        if min(self.samples.get((cls, True), 0), self.samples.get((cls, False), 0)) < self.min_samples:
            return None
        return self.seconds_per_req[(cls, True)] <= self.seconds_per_req[(cls, False)]

    def should_prune(self, num_reqs: int) -> bool:
        """Whether the next drafted step of `num_reqs` requests should prune (from recorded steps only)."""
        cls = size_class(num_reqs)
        best = self.preferred(num_reqs)
        if best is None:            # sample pruning first, then the unpruned way, alternating
            return self.samples.get((cls, True), 0) <= self.samples.get((cls, False), 0)
        if self.since_explore.get(cls, 0) >= self.explore_every:
            return not best
        return best

    def record(self, num_reqs: int, pruned: bool, seconds: float) -> None:
        """One drafted step of `num_reqs` requests: whether it pruned and its drafting wall time."""
        if num_reqs <= 0:
            return
        cls = size_class(num_reqs)
        best = self.preferred(num_reqs)
        key = (cls, pruned)
        per_req = seconds / num_reqs
        old = self.seconds_per_req.get(key)
        self.seconds_per_req[key] = per_req if old is None else (1.0 - self.alpha) * old + self.alpha * per_req
        self.samples[key] = self.samples.get(key, 0) + 1
        if best is not None:
            self.since_explore[cls] = 0 if pruned != best else self.since_explore.get(cls, 0) + 1

    def pruned_share(self) -> float:
        """Share of recorded drafted steps that pruned (0 before any)."""
        total = sum(self.samples.values())
        return sum(n for (_, pruned), n in self.samples.items() if pruned) / total if total else 0.0
