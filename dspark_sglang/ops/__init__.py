"""Python entry points of the dspark native ops.

Each wrapper calls `torch.ops.dspark.<op>` (C++ on CPU tensors, CUDA on CUDA tensors); the op checks
its inputs and raises with the tensor's name and the expected value. A wrapper falls back to the
torch reference `<op>_ref` only when the native op is missing (the extension was not built) *and*
`DSPARK_ALLOW_REFERENCE_OPS=1`; it then logs once. Otherwise a missing op raises RuntimeError.
Specifications: `dspark_sglang.ops.reference`.
"""
from __future__ import annotations

import logging

import torch

from dspark_sglang import config
from dspark_sglang.ops import fake  # noqa: F401  (registers fake impls for tracing)
from dspark_sglang.ops import native, reference

logger = logging.getLogger(__name__)
_warned: set[str] = set()

__all__ = ["verify_greedy", "verify_sampled", "confidence_survival", "schedule_prefix", "schedule_topk",
           "pack_linear_weight", "packed_linear", "sample_categorical"]


# Native ops resolved once at import: the wrappers sit on the decode hot path.
_NATIVE = {name: getattr(torch.ops.dspark, name) for name in native.OP_NAMES if native.has_op(name)}


def _resolve(name: str):
    op = _NATIVE.get(name)
    if op is not None:
        return op
    if config.allow_reference_ops():
        if name not in _warned:
            _warned.add(name)
            logger.warning("dspark op %s: native extension missing (%s); using the slow torch reference",
                           name, native.LOAD_ERROR)
        return getattr(reference, f"{name}_ref")
    raise RuntimeError(
        f"dspark op {name!r} is not available: the native extension dspark_sglang._C did not load "
        f"({native.LOAD_ERROR}). Build it with `pip install --no-build-isolation -e .`, or set "
        f"DSPARK_ALLOW_REFERENCE_OPS=1 to run the torch reference instead.")


def verify_greedy(draft_ids: torch.Tensor, target_ids: torch.Tensor,
                  verify_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tree-free chain verification with ragged verify lengths.

    Args:
        draft_ids: [R, γ] int64 drafts.  target_ids: [R, γ+1] int64 target argmax per position.
        verify_lens: [R] int32 in [0, γ].

    Returns:
        accept_lens [R] int32 (accepted drafts) and out_ids [R, γ+1] int64 (accepted drafts, then the
        correction/bonus token, then -1).

    Example:
        >>> acc, out = verify_greedy(torch.tensor([[5, 6, 7]]), torch.tensor([[5, 6, 9, 1]]),
        ...                          torch.tensor([3], dtype=torch.int32))
        >>> acc.tolist(), out.tolist()
        ([2], [[5, 6, 9, -1]])
    """
    return _resolve("verify_greedy")(draft_ids, target_ids, verify_lens)


def verify_sampled(draft_ids: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                   verify_lens: torch.Tensor, is_greedy: torch.Tensor, seed: int | None = None, offset: int = 0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lossless rejection-sampling verification (greedy rows of the batch verify greedily).

    Args:
        draft_ids: [R, γ] int64.  draft_probs: [R, γ, V] q.  target_probs: [R, γ+1, V] p (same float dtype).
        verify_lens: [R] int32 in [0, γ].  is_greedy: [R] bool.
        seed, offset: the counter-based RNG key; the output is a pure function of them. When `seed` is
            None it is drawn from `generator` (or torch's default generator), so torch.manual_seed
            makes runs reproducible. Use a fresh `offset` (e.g. the decode step) per call.

    Returns:
        accept_lens [R] int32 and out_ids [R, γ+1] int64, as in `verify_greedy`.

    Example:
        >>> p = torch.full((1, 2, 4), 0.25); q = torch.full((1, 1, 4), 0.25)
        >>> acc, out = verify_sampled(torch.tensor([[2]]), q, p, torch.tensor([1], dtype=torch.int32),
        ...                           torch.tensor([False]), seed=0)
        >>> acc.tolist()   # p == q: always accepted
        [1]
    """
    if seed is None:
        device = generator.device if generator is not None else "cpu"     # a CUDA generator draws on CUDA
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    return _resolve("verify_sampled")(draft_ids, draft_probs, target_probs, verify_lens, is_greedy, int(seed),
                                      int(offset))


def confidence_survival(conf_logits: torch.Tensor, sts_temperatures: torch.Tensor,
                        threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused c_k = σ(logit_k / T_k), survival a_k = Π_{i≤k} c_i and static-threshold lengths.

    Args:
        conf_logits: [R, γ] float32.  sts_temperatures: [γ] float32 > 0.  threshold: float in [0, 1].

    Returns:
        survival [R, γ] float32 and threshold_lens [R] int32 (leading slots with c_k ≥ threshold).

    Example:
        >>> a, n = confidence_survival(torch.zeros(1, 3), torch.ones(3), 0.5)
        >>> a.tolist(), n.tolist()
        ([[0.5, 0.25, 0.125]], [3])
    """
    return _resolve("confidence_survival")(conf_logits, sts_temperatures, float(threshold))


def schedule_prefix(survival: torch.Tensor, sps_table: torch.Tensor, min_len: int, max_len: int,
                    mode: str = "early_stop") -> tuple[torch.Tensor, torch.Tensor]:
    """Hardware-aware prefix scheduler (DSpark Algorithm 1); see `reference.schedule_prefix_ref`.

    Args:
        survival: [R, γ] float32 non-increasing rows.  sps_table: [≥ R·(max_len+1)+1] float, SPS(B).
        min_len, max_len: per-request verify length bounds.  mode: "early_stop" (lossless) or "global".

    Returns:
        verify_lens [R] int32 and expected_throughput [] float64 (Θ = τ*·SPS(B) of the plan).

    Example:
        >>> lens, theta = schedule_prefix(torch.tensor([[0.75, 0.5]]), torch.tensor([9., 9., 8., 4.]), 0, 2)
        >>> lens.tolist(), float(theta)   # Θ: 1·9=9 -> 1.75·8=14 -> 2.25·4=9 stops
        ([1], 14.0)
    """
    return _resolve("schedule_prefix")(survival, sps_table, int(min_len), int(max_len), mode)


def schedule_topk(survival: torch.Tensor, budget: int, min_len: int, max_len: int) -> torch.Tensor:
    """Top-K production scheduler: `budget` total draft tokens go to the highest current survivals.

    Args:
        survival: [R, γ] float32.  budget: total Σ ℓ_r (from older confidence).  min_len, max_len: bounds.

    Returns:
        verify_lens [R] int32.

    Example:
        >>> schedule_topk(torch.tensor([[0.9, 0.8], [0.7, 0.1]]), 3, 0, 2).tolist()
        [2, 1]
    """
    return _resolve("schedule_topk")(survival, int(budget), int(min_len), int(max_len))


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight [N, K] (bfloat16 or float32) in the layout `packed_linear` reads:
    [⌈N/16⌉·16, ⌈K/P⌉·P] of the same dtype, 16 output columns per block (`reference.pack_linear_weight_ref`).
    Pack once, at load time."""
    return _resolve("pack_linear_weight")(weight)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                  out_features: int) -> torch.Tensor:
    """y [..., N] = x [..., K] · Wᵀ + bias for a weight packed by `pack_linear_weight` (same dtype as x;
    leading dimensions are flattened into the op's rows and restored).

    Each output row is computed in the same order whatever M is, so a row is bit-identical alone or in
    a batch. Example:
        >>> w = torch.eye(3)
        >>> packed_linear(torch.tensor([[1., 2., 3.]]), pack_linear_weight(w), None, 3).tolist()
        [[1.0, 2.0, 3.0]]
    """
    y = _resolve("packed_linear")(x.reshape(-1, x.shape[-1]), packed, bias, int(out_features))    # [M, N]
    return y.view(*x.shape[:-1], int(out_features))


def sample_categorical(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One inverse-CDF draw per row: ids [N] int64 from probs [N, V] float32 (non-negative, any total) and
    uniforms [N] float64 in [0, 1); -1 for a row without positive finite mass. Spec:
    `reference.sample_categorical_ref`. Much cheaper than `torch.multinomial` on CPU.

    Example:
        >>> sample_categorical(torch.tensor([[0.0, 0.25, 0.75]]), torch.tensor([0.2], dtype=torch.float64)).tolist()
        [1]
    """
    return _resolve("sample_categorical")(probs, uniforms)
