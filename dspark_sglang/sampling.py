"""Per-request logit processing and token sampling shared by the drafter and the verifier.

`logits_to_probs` is THE definition of "the distribution a request samples from": the drafter uses it
for the draft distribution q and verification uses it for the target distribution p. Speculative
sampling is lossless only if both sides apply exactly the same temperature / top-k / top-p, so both
must call this one function.

Processing order for a sampled row (temperature > 0): divide by the temperature, keep the top-k
logits, then keep the smallest set of most-likely tokens whose mass reaches top-p, renormalise.
Ties are kept: every token whose logit equals the k-th largest (or the top-p cutoff) survives, so the
result does not depend on how a sort orders equal values (CPU and CUDA agree).

Greedy rows (temperature == 0) are returned as the softmax at temperature 1 after the same top-k /
top-p filtering. Only their argmax matters (verification of a greedy row compares argmaxes); filtering
never removes the argmax, so `argmax(probs) == argmax(logits)` for greedy rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingBatch:
    """Sampling parameters of R requests, one entry per request.

    Build with `SamplingBatch.from_lists(...)` or `SamplingBatch.greedy(R)`; the tensors must live on
    the device of the logits they are applied to.
    """

    temperature: torch.Tensor
    """[R] float32; 0 means greedy (argmax)."""
    top_k: torch.Tensor
    """[R] int32; <= 0 (or >= V) means off."""
    top_p: torch.Tensor
    """[R] float32 in (0, 1]; 1 means off."""

    def __post_init__(self) -> None:
        num_reqs = self.temperature.shape[0]
        for name in ("temperature", "top_k", "top_p"):
            t = getattr(self, name)
            if t.dim() != 1 or t.shape[0] != num_reqs:
                raise ValueError(f"SamplingBatch.{name} must have shape [R={num_reqs}]; got {tuple(t.shape)}")

    @classmethod
    def from_lists(cls, temperature: list[float], top_k: list[int] | None = None,
                   top_p: list[float] | None = None, device: torch.device | str | None = None
                   ) -> "SamplingBatch":
        """Build from Python lists, checking ranges (temperature >= 0, top_p in (0, 1]).

        Example:
            >>> s = SamplingBatch.from_lists([0.0, 0.7], top_k=[0, 20], top_p=[1.0, 0.8])
            >>> s.is_greedy.tolist()
            [True, False]
        """
        num_reqs = len(temperature)
        top_k = [0] * num_reqs if top_k is None else top_k
        top_p = [1.0] * num_reqs if top_p is None else top_p
        if len(top_k) != num_reqs or len(top_p) != num_reqs:
            raise ValueError(f"temperature, top_k, top_p must have the same length; got "
                             f"{num_reqs}, {len(top_k)}, {len(top_p)}")
        for i, t in enumerate(temperature):
            if not t >= 0.0:
                raise ValueError(f"temperature[{i}] must be >= 0 (0 = greedy); got {t}")
        for i, p in enumerate(top_p):
            if not 0.0 < p <= 1.0:
                raise ValueError(f"top_p[{i}] must be in (0, 1]; got {p}")
        return cls(temperature=torch.tensor(temperature, dtype=torch.float32, device=device),
                   top_k=torch.tensor(top_k, dtype=torch.int32, device=device),
                   top_p=torch.tensor(top_p, dtype=torch.float32, device=device))

    @classmethod
    def greedy(cls, num_reqs: int, device: torch.device | str | None = None) -> "SamplingBatch":
        """All requests greedy."""
        return cls.from_lists([0.0] * num_reqs, device=device)

    @property
    def num_reqs(self) -> int:
        return self.temperature.shape[0]

    @property
    def is_greedy(self) -> torch.Tensor:
        """[R] bool: temperature == 0."""
        return self.temperature == 0

    def to(self, device: torch.device | str) -> "SamplingBatch":
        return SamplingBatch(self.temperature.to(device), self.top_k.to(device), self.top_p.to(device))

    def select(self, rows: torch.Tensor) -> "SamplingBatch":
        """The parameters of requests `rows` ([n] int64 indices), in that order."""
        return SamplingBatch(self.temperature[rows], self.top_k[rows], self.top_p[rows])


def _per_row(param: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """[R] -> [R, 1, ..., 1] broadcastable against logits [R, ..., V]."""
    return param.view(param.shape[0], *([1] * (logits.dim() - 1)))


def logits_to_probs(logits: torch.Tensor, sampling: SamplingBatch) -> torch.Tensor:
    """Apply each request's temperature, top-k and top-p, and return float32 probabilities.

    Args:
        logits:   [R, V] or [R, S, V] (any number of middle dims) float; row r uses request r's params.
        sampling: the R requests' parameters.

    Returns:
        probs: same shape as logits, float32, each [..., V] row sums to 1. Filtered tokens get exactly 0.
        Greedy rows: softmax at temperature 1 after filtering (their argmax is the raw argmax).

    Example:
        >>> s = SamplingBatch.from_lists([1.0], top_k=[2])
        >>> logits_to_probs(torch.tensor([[0.0, 1.0, 2.0]]), s)
        tensor([[0.0000, 0.2689, 0.7311]])
    """
    if logits.shape[0] != sampling.num_reqs:
        raise ValueError(f"logits has {logits.shape[0]} rows but sampling has {sampling.num_reqs} requests")
    logits = logits.float()                                                   # [R, ..., V]
    vocab = logits.shape[-1]
    temp = _per_row(sampling.temperature, logits)                             # [R, 1.., 1]
    temp = torch.where(temp > 0, temp, torch.ones_like(temp))                 # greedy rows: T = 1
    logits = logits / temp                                                    # [R, ..., V]
    filtering = ((sampling.top_k > 0) & (sampling.top_k < vocab)) | (sampling.top_p < 1.0)   # [R]
    if not bool(filtering.any()):  # sync: small parameter tensor; skips the top-k / top-p search
        return logits.softmax(dim=-1)

    # Flatten to rows; each row carries its request's k and p.
    flat = logits.reshape(-1, vocab)                                          # [N, V]
    per_row = flat.shape[0] // sampling.num_reqs
    top_k = sampling.top_k.long().repeat_interleave(per_row)                  # [N]
    top_p = sampling.top_p.float().repeat_interleave(per_row)                 # [N]
    cutoff = _filter_cutoff(flat, top_k, top_p)                               # [N, 1]
    return _drop_below(flat, cutoff).softmax(dim=-1).view_as(logits)          # [R, ..., V]


def logits_to_probs_full_sort(logits: torch.Tensor, sampling: SamplingBatch) -> torch.Tensor:
    """`logits_to_probs` written the direct way, sorting every row of the vocabulary: the reference its
    candidate search is tested against (`test_candidate_search_equals_full_sort`) and timed against
    (`benchmark/kernels/bench_sampling.py`). Same arguments and result."""
    logits = logits.float()
    temp = _per_row(sampling.temperature, logits)
    logits = logits / torch.where(temp > 0, temp, torch.ones_like(temp))
    vocab = logits.shape[-1]
    neg_inf = torch.tensor(float("-inf"), device=logits.device)
    srt = logits.sort(dim=-1, descending=True).values                         # [R, ..., V]
    k = _per_row(sampling.top_k.long(), logits)
    k = torch.where((k <= 0) | (k > vocab), torch.full_like(k, vocab), k)
    srt = torch.where(srt >= srt.gather(-1, (k - 1).expand(*logits.shape[:-1], 1)), srt, neg_inf)
    probs = srt.softmax(dim=-1)
    top_p = _per_row(sampling.top_p, logits)
    keep = (((probs.cumsum(-1) - probs) < top_p) | (top_p >= 1.0)) & (srt > neg_inf)
    keep[..., 0] = True
    cutoff = torch.where(keep, srt, torch.tensor(float("inf"), device=logits.device)).amin(dim=-1, keepdim=True)
    return torch.where(logits >= cutoff, logits, neg_inf).softmax(dim=-1)


def _drop_below(x: torch.Tensor, cutoff: torch.Tensor) -> torch.Tensor:
    """x with every entry below `cutoff` (broadcast) lowered by 1e30, so that softmax / logsumexp give it
    exactly 0 weight; kept entries are unchanged (x − 0). Bit-identical softmax to masking with −inf via
    `torch.where`, which runs unvectorised on CPU here (≈ 3 ns an element, 2.5× slower)."""
    return x.sub((x < cutoff).to(x.dtype), alpha=1e30)


TOP_CANDIDATES = 64
"""Sorted candidates `logits_to_probs` first looks at for the top-p cutoff (widened 8x until they hold it)."""


def _filter_cutoff(flat: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row of flat [N, V] with its top_k [N] (≤ 0 or ≥ V: off) and top_p [N] (1: off), the smallest logit
    that survives top-k then top-p (a [N, 1] value to mask with `>=`, so ties survive; -inf keeps every token).

    Rules (the definition `logits_to_probs` documents): top-k keeps the logits >= the k-th largest. Top-p
    walks the survivors in descending order and keeps token i while the probability mass strictly before it
    is < p (the smallest prefix reaching p; the first token always stays). Only the C largest logits are
    sorted (`torch.topk`, C = TOP_CANDIDATES, or the largest k if more): the kept prefix lies inside them
    whenever their mass reaches p, which holds for all but near-flat rows; C grows 8x until it does (at C =
    V this is the full sort). The mass uses the exact normaliser over every top-k survivor.
    """
    vocab = flat.shape[1]
    neg_inf = torch.tensor(float("-inf"), device=flat.device)
    k = torch.where((top_k <= 0) | (top_k > vocab), torch.full_like(top_k, vocab), top_k)   # [N]
    limited = k < vocab                                                       # [N] top-k active
    any_limited = bool(limited.any())                                         # sync: small parameter tensor
    k_max = int(k[limited].max()) if any_limited else 0                       # sync: loop bound
    cand = min(vocab, max(TOP_CANDIDATES, k_max))
    top = flat.topk(cand, dim=-1).values                                      # [N, C] descending
    kth = torch.where(limited, top.gather(1, (k.clamp(max=cand) - 1).unsqueeze(1)).squeeze(1), neg_inf)   # [N]
    nucleus = top_p < 1.0                                                     # [N] top-p active
    if not bool(nucleus.any()):                                               # sync: top-k only
        return kth.unsqueeze(1)
    kth = kth.unsqueeze(1)                                                    # [N, 1] (C >= every active k)
    survivors = _drop_below(flat, kth) if any_limited else flat
    log_norm = survivors.logsumexp(dim=-1, keepdim=True)                      # [N, 1] over the survivors
    while True:
        top = torch.where(top >= kth, top, neg_inf)                           # [N, C] top-k survivors
        probs = (top - log_norm).exp()                                        # [N, C] sorted probabilities
        mass = probs.cumsum(dim=-1)                                           # [N, C]
        enough = ~nucleus | (mass[:, -1] >= top_p) | (cand == vocab)
        if bool(enough.all()):                                                # sync: loop bound
            break
        cand = min(vocab, cand * 8)
        top = flat.topk(cand, dim=-1).values
    keep = ((mass - probs) < top_p.unsqueeze(1)) & (top > neg_inf)           # [N, C]
    keep[:, 0] = True
    nucleus_cut = torch.where(keep, top, torch.tensor(float("inf"), device=flat.device)).amin(dim=-1)   # [N]
    return torch.where(nucleus.unsqueeze(1), nucleus_cut.unsqueeze(1), kth)


def ragged_probs(flat_logits: torch.Tensor, row_mask: torch.Tensor, sampling: SamplingBatch) -> torch.Tensor:
    """`logits_to_probs` of a ragged verify's rows, laid out for the verify ops.

    Args:
        flat_logits: [Σ rows, V]: the verified rows, request-major (the order of row_mask's True entries).
        row_mask:    [R, W] bool, True at the window positions request r verifies (a prefix of each row).
    Returns:
        [R, W, V] float32: the probabilities where row_mask is True, zeros elsewhere. Only the Σ rows are
        normalised (the padding is never softmaxed or sorted for top-p).
    """
    owner = row_mask.nonzero()[:, 0]                                          # [Σ rows] request of each row
    out = torch.zeros(*row_mask.shape, flat_logits.shape[-1], dtype=torch.float32, device=flat_logits.device)
    out[row_mask] = logits_to_probs(flat_logits, sampling.select(owner))
    return out


def greedy_ids(probs: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [...] int64 argmax (first index on ties)."""
    return probs.argmax(dim=-1)


def sample_from_probs(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row: [..., V] float probabilities -> [...] int64.

    An inverse-CDF draw in float64 (`ops.sample_categorical`) from one uniform per row taken from
    `generator` (on the probs' device; seeded, the draws are reproducible). On CPU it is 11-110x faster than
    `torch.multinomial` (≈ 1 ms per 49k-token row on a 2-core host; `benchmark/kernels/bench_sampling.py`).
    A CPU row without positive finite mass raises ValueError.
    """
    from dspark_sglang import ops

    flat = probs.reshape(-1, probs.shape[-1]).float()                         # [N, V]
    uniforms = torch.rand(flat.shape[0], dtype=torch.float64, generator=generator, device=flat.device)  # [N]
    ids = ops.sample_categorical(flat, uniforms)                              # [N], -1 = no mass
    if ids.device.type == "cpu" and bool((ids < 0).any()):
        row = int((ids < 0).nonzero()[0])
        raise ValueError(f"sample_from_probs: row {row} has no positive finite probability mass "
                         f"(sum {float(flat[row].double().sum())}); probs must be non-negative and finite")
    return ids.view(probs.shape[:-1])


def sample_tokens(probs: torch.Tensor, sampling: SamplingBatch,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per request: argmax for greedy rows, a draw from `probs` for the others.

    Args:
        probs: [R, ..., V] float32 from `logits_to_probs`.
    Returns:
        [R, ...] int64 token ids.
    """
    greedy = greedy_ids(probs)                                                # [R, ...]
    if bool(sampling.is_greedy.all()):  # sync: small parameter tensor; no draw needed
        return greedy
    sampled = sample_from_probs(probs, generator)                             # [R, ...]
    is_greedy = _per_row(sampling.is_greedy, sampled)                         # [R, 1..]
    return torch.where(is_greedy, greedy, sampled)
