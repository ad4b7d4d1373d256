"""Prompt-lookup drafts: a block copied from the request's own context, competing with the drafter's.

Coding assistants quote the code they were given (tests for a pasted function, a refactor, a fix): the
next tokens are often a verbatim continuation of an earlier occurrence of the last few tokens. The
DSpark drafter sees the context only through the target's features and copies poorly at 2k-5k tokens
(coding-session replay: τ 1.0-1.7 where SGLang's NGRAM reaches 3-5). Each drafted step this module
looks up, per request, the earlier occurrences of the last n tokens (n = `n_max` down to `n_min`, anchor
included), measures how far back each one keeps matching the history (up to `MAX_MATCH` tokens), and
offers the m ≤ G tokens that followed the longest match (the most recent among equals): a request that
is quoting a function matches it over dozens of tokens, a coincidental 3-gram over three. G is the verify
window, which `--dspark-lookup-max-len` may make wider than the drafter's γ. With a `SharedCorpus`, the
answers of earlier requests are searched too, and their match wins when it runs back further.

Its survival is a_j = Π_{k≤j} p_{L,k} for j < m (0 beyond): p_{L,k} is the observed rate at which slot
k of a block whose match length falls in L's bucket (`match_bucket`: 2, 3, 4-5, 6-9, 10-17, 18+) was
accepted given slots 1..k-1 were (counts decayed over the last ~`memory` lookup opportunities, on top of
an optimistic prior worth `prior_weight` outcomes; greedy and sampled requests kept apart). The worker
takes the lookup block for a request when its expected accepted length Σ_j a_j beats the drafter's
Σ_j a_j, before the verify policy plans on the survivals.

Lossless: a lookup block is a deterministic proposal, q_k = one-hot(x_k). Greedy verification compares
it with the target's argmax; sampled verification accepts x_k with probability min(1, p(x_k) / 1) and
resamples from (p − q)+ on rejection, which is the target distribution. The choice between the two
blocks and p_{n,k} use past verify outcomes and the context only, never the target's current logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dspark_sglang.serving.shared_corpus import SharedCorpus


@dataclass
class LookupBlock:
    """One request's prompt-lookup proposal."""

    tokens: np.ndarray
    """[m] int64, 1 ≤ m ≤ G: the tokens that followed the match."""
    match_len: int
    """L: tokens of the history's suffix (the anchor included) that the occurrence matches, ≤ MAX_MATCH."""
    source: str = field(default="context", repr=False)
    """Where the occurrence is: "context" (the request's own prompt + output) or "shared" (an earlier
    request's answer, `shared_corpus.SharedCorpus`); each source keeps its own acceptance tables."""


MAX_MATCH = 32
"""Longest backward match measured (a longer one counts as MAX_MATCH)."""

MATCH_CHUNK = 32
"""Depths compared per vectorised pass when a match is extended backwards."""

MATCH_BUCKETS = (2, 3, 4, 6, 10, 18)
"""Lower bounds of the match-length buckets that share an acceptance table."""


def match_bucket(match_len: int, buckets: tuple[int, ...] = MATCH_BUCKETS) -> int:
    """The acceptance-table bucket of a match length: the largest bound in `buckets` ≤ match_len.

    Example:
        >>> [match_bucket(n) for n in (2, 3, 5, 9, 12, 32)]
        [2, 3, 4, 6, 10, 18]
    """
    return max((b for b in buckets if b <= match_len), default=match_len)


class TokenHistory:
    """A request's prompt + output tokens in a growing int64 buffer (amortised appends)."""

    def __init__(self) -> None:
        self.buf = np.empty(256, dtype=np.int64)
        self.size = 0
        self.prompt_len = 0
        """Leading tokens that are the prompt (the rest is output)."""

    def extend(self, tokens) -> None:
        tokens = np.asarray(tokens, dtype=np.int64)
        need = self.size + tokens.size
        if need > self.buf.size:
            grown = np.empty(max(need, 2 * self.buf.size), dtype=np.int64)
            grown[:self.size] = self.buf[:self.size]
            self.buf = grown
        self.buf[self.size:need] = tokens
        self.size = need

    @property
    def tokens(self) -> np.ndarray:
        return self.buf[:self.size]


def find_continuation(history: np.ndarray, gamma: int, n_max: int, n_min: int,
                      max_match: int = MAX_MATCH) -> LookupBlock | None:
    """The ≤ γ tokens after the earlier occurrence of history's suffix that matches it longest: the
    occurrences of the last n tokens, for the largest n in [n_min, n_max] that occurs, are extended
    backwards (up to `max_match` tokens) and the longest match wins, the most recent among equals.
    None when no suffix of n_min tokens recurs.

    Example:
        >>> find_continuation(np.array([5, 6, 7, 8, 9, 5, 6]), gamma=3, n_max=3, n_min=2)
        LookupBlock(tokens=array([7, 8, 9]), match_len=2)
        >>> h = np.array([1, 5, 6, 7, 2, 5, 6, 8, 1, 5, 6])      # "5 6" twice; "1 5 6" only at 0
        >>> find_continuation(h, gamma=2, n_max=2, n_min=2)
        LookupBlock(tokens=array([7, 2]), match_len=3)
    """
    size = history.size
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        starts = size - n                                          # candidate starts 0..size-n-1 (not the suffix)
        hit = history[:starts] == history[size - n]
        for j in range(1, n):
            hit &= history[j:starts + j] == history[size - n + j]
        found = np.flatnonzero(hit)                                # [c] ascending starts
        if not found.size:
            continue
        lengths = np.full(found.size, n)                           # [c] backward match length so far
        alive = np.arange(found.size)                              # [a] candidates still matching
        d, reach = n, min(max_match, size)
        while alive.size and d < reach:                            # depths d..d+w−1 at once: a quote runs back far
            offs = np.arange(min(MATCH_CHUNK, reach - d))          # [w]
            prev = found[alive, None] - 1 - (d - n) - offs         # [a, w] history[prev] vs history[size−1−d−offs]
            same = (prev >= 0) & (history[np.maximum(prev, 0)] == history[size - 1 - d - offs])
            run = np.where(same.all(axis=1), offs.size, same.argmin(axis=1))   # [a] leading matches
            lengths[alive] += run
            alive = alive[run == offs.size]
            d += offs.size
        best = int(np.flatnonzero(lengths == lengths.max())[-1])   # longest, then most recent
        begin = int(found[best]) + n
        return LookupBlock(tokens=history[begin:begin + gamma].copy(), match_len=int(lengths[best]))
    return None


@dataclass
class LookupAcceptance:
    """p_{L,k}: conditional acceptance of slot k of a block whose match length is in L's bucket
    (`match_bucket`), from decayed counts and a prior.

    The counts decay once per lookup *opportunity* (a request with a match on a drafted step), not per
    verified block: a table whose blocks lose to the drafter stops being verified, and without this its
    old rejections would keep it losing forever. With it, after ~`memory` opportunities the optimistic
    prior is back in charge, the next block is verified, and the table follows the traffic again."""

    gamma: int
    memory: float = 256.0
    """Opportunities each (n, greedy) table remembers (decay 1 − 1/memory per opportunity)."""
    prior: float = 0.8
    """Acceptance assumed before any outcome: optimistic, so that a fresh table gets verified."""
    prior_weight: float = 2.0
    buckets: tuple[int, ...] = MATCH_BUCKETS
    """Lower bounds of the match-length buckets (`match_bucket`)."""
    accepted: dict = field(default_factory=dict)
    verified: dict = field(default_factory=dict)

    def _tables(self, match_len: int, greedy: bool, source: str) -> tuple[np.ndarray, np.ndarray]:
        key = (match_bucket(match_len, self.buckets), greedy, source)
        if key not in self.accepted:
            self.accepted[key] = np.zeros(self.gamma)
            self.verified[key] = np.zeros(self.gamma)
        return self.accepted[key], self.verified[key]

    def rates(self, match_len: int, greedy: bool, source: str = "context") -> np.ndarray:
        """[γ] p_{L,k} of match length L = match_len (blocks from `source`)."""
        acc, ver = self._tables(match_len, greedy, source)
        return (acc + self.prior * self.prior_weight) / (ver + self.prior_weight)

    def survival(self, block: LookupBlock, greedy: bool) -> np.ndarray:
        """[γ] a_j = Π_{k≤j} p_{L,k} for the block's m slots, 0 beyond."""
        out = np.zeros(self.gamma)
        m = block.tokens.size
        out[:m] = np.cumprod(self.rates(block.match_len, greedy, block.source)[:m])
        return out

    def forget(self, match_len: int, greedy: bool, source: str = "context") -> None:
        """One opportunity of a match of this length passed: decay its bucket's counts."""
        acc, ver = self._tables(match_len, greedy, source)
        keep = 1.0 - 1.0 / self.memory
        acc *= keep
        ver *= keep

    def record(self, match_len: int, greedy: bool, verified: int, accepted: int, source: str = "context") -> None:
        """One verified lookup block: `verified` slots sent to the target, the first `accepted` taken
        (slot accepted+1 was rejected when accepted < verified)."""
        seen = min(verified, accepted + 1)                         # slots verified with their prefix accepted
        if seen <= 0:
            return
        acc, ver = self._tables(match_len, greedy, source)
        ver[:seen] += 1.0
        acc[:accepted] += 1.0


class PromptLookup:
    """Per-request histories, lookups and the acceptance tables of one server.

    Example:
        >>> lookup = PromptLookup(gamma=4)
        >>> lookup.propose("r", [1, 2, 3, 4, 1, 2], [3], anchor=3)    # ... 1 2 3 | 4 1 2 3 ... recurs
        LookupBlock(tokens=array([4, 1, 2, 3]), match_len=3)
    """

    def __init__(self, gamma: int, n_max: int = 4, n_min: int = 2, shared: "SharedCorpus | None" = None) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"prompt lookup needs 1 <= n_min <= n_max; got n_min={n_min}, n_max={n_max}")
        self.gamma, self.n_max, self.n_min = gamma, n_max, n_min
        self.histories: dict[str, TokenHistory] = {}
        self.acceptance = LookupAcceptance(gamma)
        self.shared = shared
        """Answers of finished requests, searched too (None: the request's own context only)."""

    def propose(self, rid: str, prompt_ids, output_ids, anchor: int) -> LookupBlock | None:
        """Sync the request's history with its prompt + output (ending at `anchor`, the token this step
        verifies first) and look up a continuation."""
        hist = self.histories.get(rid)
        if hist is not None and hist.size - len(prompt_ids) > len(output_ids):   # outputs were reset: rebuild
            hist = None
        if hist is None:
            hist = self.histories[rid] = TokenHistory()
            hist.extend(prompt_ids)
            hist.prompt_len = len(prompt_ids)
        known = hist.size - len(prompt_ids)                        # output tokens already in the buffer
        if known < len(output_ids):
            hist.extend(output_ids[known:])
        tokens = hist.tokens
        if tokens.size == 0 or tokens[-1] != anchor:              # the anchor not yet among the outputs
            tokens = np.append(tokens, anchor)
        own = find_continuation(tokens, self.gamma, self.n_max, self.n_min)
        if self.shared is None:
            return own
        other = self.shared.find(tokens, self.gamma)               # the longer match wins; the own context on ties
        return other if other is not None and (own is None or other.match_len > own.match_len) else own

    def drop(self, rid: str) -> None:
        """The request finished: its answer (after the prompt's last tokens) joins the shared corpus."""
        hist = self.histories.pop(rid, None)
        if hist is not None and self.shared is not None:
            self.shared.add_answer(hist.tokens, hist.prompt_len)
