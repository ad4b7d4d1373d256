"""`PruningChoice`: whether a drafted step prunes at alg1's admission floor, chosen by measured drafting time.

Pruned drafting (`DSparkDrafter.propose(..., survival_floor=f)`) stops drafting a request's slots once
their survival falls under the floor, so slots alg1 can never admit cost no draft-head row. It does so in
a Python loop over the block's slots (confidence, survival, masks, chunked head calls), and whether that
loop costs less than the head rows it saves depends on the host and the batch, not on the floor alone
(`benchmark/kernels/bench_drafter.py`, pruned vs unpruned, ms per `propose`, bf16):

    host                          R = 1        R = 4         R = 16
    EPYC, AVX-512 BF16 (stop 29)  4.35 / 3.67  9.97 / 6.13   19.97 / 17.61
    EPYC Zen 3, AVX2 (stop 30)    5.62 / 4.46  8.21 / 7.00   21.24 / 23.03

So the serving worker measures it, per class of request count (`draft_gate.size_class`: 1, 2-3, 4-7,
8-15, ...). Drafting time grows with the context over a request's life and drops at the next one, so the
two modes are compared on neighbouring steps of the same batch: whenever a drafted step runs the other
mode than the previous drafted step of its class, over the same requests, the difference of their drafting
seconds per request (pruned minus unpruned) is one sample of a moving average (a pair across a change of
batch — at one request, the end of one request and the start of the next — would mostly measure the
change of context). The modes alternate until `min_samples` such pairs exist;
then the class drafts the way the average says is cheaper, and runs the other way once after every
`explore_every` steps so that the average follows the host and the traffic (each exploration gives two
pairs: into the other mode and back). A first version kept one average per mode instead, which compares
the preferred mode's recent steps with the other mode's older ones: in a served run at one request it
drafted 16 % of the steps the dearer way, where exploring accounts for 3 %.

Lossless either way: the floor only skips slots the policy never admits, so the verify plans are the same;
the choice looks only at past steps' timings, never at the current block.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dspark_sglang.scheduling.draft_gate import moving_average, size_class


@dataclass
class PruningChoice:
    """Per-server choice between pruned and unpruned drafting; feed it every drafted step with `record`.

    Example:
        >>> choice = PruningChoice(min_samples=1)
        >>> choice.should_prune(1)                     # nothing measured: try pruning first
        True
        >>> choice.record(1, pruned=True, seconds=0.0056)
        >>> choice.should_prune(1)                     # then the unpruned way
        False
        >>> choice.record(1, pruned=False, seconds=0.0045)
        >>> choice.should_prune(1), choice.should_prune(16)   # class 1 has one pair; 16 nothing yet
        (False, True)
    """

    explore_every: int = 32
    """After this many drafted steps of a class in the preferred mode, draft once the other way."""
    alpha: float = 0.2
    """Weight of the newest pair in the moving average."""
    min_samples: int = 4
    """Pairs of neighbouring steps in different modes a class collects before choosing."""
    max_ratio: float = 2.0
    """A pair whose slower step took more than this many times the faster one is not used: that measures
    something else than the mode (a server's first drafted steps took 85 ms against 5)."""
    pruned_minus_full: dict[int, float] = field(default_factory=dict)
    """class -> moving average of (pruned − unpruned) drafting seconds per request over neighbouring steps."""
    pairs: dict[int, int] = field(default_factory=dict)
    """class -> pairs recorded."""
    last: dict[int, tuple[object, bool, float]] = field(default_factory=dict)
    """class -> (batch, pruned, seconds per request) of its previous drafted step."""
    since_explore: dict[int, int] = field(default_factory=dict)
    """class -> drafted steps in the preferred mode since that class last ran the other one."""

    def __post_init__(self) -> None:
        if self.explore_every < 1:
            raise ValueError(f"explore_every must be >= 1; got {self.explore_every}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1]; got {self.alpha}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1; got {self.min_samples}")
        if self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be > 1; got {self.max_ratio}")

    def preferred(self, num_reqs: int) -> bool | None:
        """The cheaper mode of `num_reqs`'s class (True = pruned), or None while it has too few pairs."""
        cls = size_class(num_reqs)
        if self.pairs.get(cls, 0) < self.min_samples:
            return None
        return self.pruned_minus_full[cls] <= 0.0

    def should_prune(self, num_reqs: int) -> bool:
        """Whether the next drafted step of `num_reqs` requests should prune (from recorded steps only)."""
        cls = size_class(num_reqs)
        best = self.preferred(num_reqs)
        if best is None:            # alternate, pruning first
            return cls not in self.last or not self.last[cls][1]
        if self.since_explore.get(cls, 0) >= self.explore_every:
            return not best
        return best

    def record(self, num_reqs: int, pruned: bool, seconds: float, batch: object = None) -> None:
        """One drafted step of `num_reqs` requests: whether it pruned, its drafting wall time and which
        requests it drafted (`batch`, any comparable key, e.g. the tuple of request ids: two steps pair only
        when it is equal)."""
        if num_reqs <= 0:
            return
        cls = size_class(num_reqs)
        per_req = seconds / num_reqs
        previous = self.last.get(cls)
        if previous is not None and previous[0] == batch and previous[1] != pruned \
                and max(per_req, previous[2]) <= self.max_ratio * min(per_req, previous[2]):
            diff = per_req - previous[2] if pruned else previous[2] - per_req
            self.pruned_minus_full[cls] = moving_average(self.pruned_minus_full.get(cls), diff, self.alpha)
            self.pairs[cls] = self.pairs.get(cls, 0) + 1
        self.last[cls] = (batch, pruned, per_req)
        best = self.preferred(num_reqs)
        self.since_explore[cls] = 0 if best is None or pruned != best else self.since_explore.get(cls, 0) + 1
