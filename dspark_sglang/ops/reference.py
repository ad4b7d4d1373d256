"""Pure-torch references of every dspark op. Each docstring is the op's specification.

The native ops (`csrc/cpu`, `csrc/cuda`) must return exactly what these return (integer outputs
bit-for-bit; float outputs within `TOL`). They are written to read like the paper's maths, not to be
fast. Conventions: token ids are int64, lengths int32, padding is -1.
"""
from __future__ import annotations

import torch

from dspark_sglang.ops import counter_rng

SCHEDULE_MODES = ("early_stop", "global")


def verify_greedy_ref(draft_ids: torch.Tensor, target_ids: torch.Tensor,
                      verify_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tree-free greedy chain verification with a ragged verify length per request.

    Args:
        draft_ids:   [R, γ] int64, drafted tokens x_1..x_γ of each request.
        target_ids:  [R, γ+1] int64, the target's argmax at each verified position (position j
                     predicts the token after anchor + j drafts).
        verify_lens: [R] int32, ℓ_r ∈ [0, γ]: how many drafts of row r the target verified.

    Returns:
        accept_lens: [R] int32, a_r = number of leading j < ℓ_r with draft_ids[r, j] == target_ids[r, j].
        out_ids:     [R, γ+1] int64, the tokens to commit: draft_ids[r, :a_r], then target_ids[r, a_r]
                     (the correction at the first mismatch, or the bonus token when all ℓ_r passed),
                     then -1 padding. Every row commits a_r + 1 tokens.
    """
    num_reqs, gamma = draft_ids.shape
    pos = torch.arange(gamma, device=draft_ids.device)
    match = (draft_ids == target_ids[:, :gamma]) & (pos < verify_lens.unsqueeze(1))
    accept_lens = match.int().cumprod(-1).sum(-1)
    out_ids = torch.full((num_reqs, gamma + 1), -1, dtype=torch.int64, device=draft_ids.device)
    out_ids[:, :gamma] = torch.where(pos < accept_lens.unsqueeze(1), draft_ids, -1)
    idx = accept_lens.long().unsqueeze(1)
    out_ids.scatter_(1, idx, target_ids.gather(1, idx))
    return accept_lens.int(), out_ids


def verify_sampled_ref(draft_ids: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                       verify_lens: torch.Tensor, is_greedy: torch.Tensor, seed: int,
                       offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Lossless speculative-sampling verification of drafted chains (Leviathan et al. 2023).

    For a sampled row r, draft x_k (k < ℓ_r) is accepted when u(r,k)·q(x_k) < p(x_k), i.e. with
    probability min(1, p(x_k)/q(x_k)), where q = draft_probs[r, k], p = target_probs[r, k] and
    u(r,k) is the counter-based coin of `counter_rng`. Verification stops at the first rejection k
    and emits a token from normalize(max(0, p − q)) (from p itself if that is all zero); if all ℓ_r
    drafts pass it emits the bonus token from p = target_probs[r, ℓ_r]. Every draw from a weight
    vector w is the exponential race argmax_i w_i / E_i (E_i ~ Exp(1) from `counter_rng`, ties to the
    lowest index), which samples i with probability w_i / Σw without normalizing.
    A greedy row (is_greedy[r]) accepts while x_k == argmax p and emits argmax p (first index on ties).

    Args:
        draft_ids:    [R, γ] int64 drafted tokens (x_k sampled from draft_probs[r, k]).
        draft_probs:  [R, γ, V] float draft distributions q after temperature / top-k / top-p.
        target_probs: [R, γ+1, V] float target distributions p after the same processing.
        verify_lens:  [R] int32 in [0, γ].
        is_greedy:    [R] bool.
        seed, offset: non-negative 64-bit integers; outputs are a pure function of them and the inputs.

    Returns:
        accept_lens [R] int32 and out_ids [R, γ+1] int64, laid out as in `verify_greedy_ref`.
    """
    num_reqs, gamma = draft_ids.shape
    vocab = target_probs.shape[-1]
    dev = draft_ids.device
    rows = torch.arange(num_reqs, device=dev)
    pos = torch.arange(gamma, device=dev)
    base = counter_rng.base_key(seed, offset)

    target_argmax = target_probs.argmax(-1)                                         # [R, γ+1]
    p_x = target_probs[:, :gamma].gather(-1, draft_ids.unsqueeze(-1)).squeeze(-1).double()
    q_x = draft_probs.gather(-1, draft_ids.unsqueeze(-1)).squeeze(-1).double()      # [R, γ]
    coin = counter_rng.coins(base, rows.unsqueeze(1).expand(-1, gamma), pos.expand(num_reqs, -1))
    ok = torch.where(is_greedy.unsqueeze(1), draft_ids == target_argmax[:, :gamma], coin * q_x < p_x)
    ok &= pos < verify_lens.unsqueeze(1)
    accept_lens = ok.int().cumprod(-1).sum(-1)                                      # [R]

    # The emitted token sits at position a_r: a correction if a_r < ℓ_r, else the bonus.
    rejected = (accept_lens < verify_lens).unsqueeze(1)
    p_row = target_probs[rows, accept_lens.long()].double()                          # [R, V]
    q_row = draft_probs[rows, accept_lens.long().clamp(max=gamma - 1)].double()
    residual = torch.where(rejected, (p_row - q_row).clamp_min(0), p_row)
    weights = torch.where((residual > 0).any(-1, keepdim=True), residual, p_row)
    expo = counter_rng.exponentials(base, rows, accept_lens.long(), vocab)         # [R, V]
    drawn = (weights / expo).argmax(-1)
    emitted = torch.where(is_greedy, target_argmax[rows, accept_lens.long()], drawn)

    out_ids = torch.full((num_reqs, gamma + 1), -1, dtype=torch.int64, device=dev)
    out_ids[:, :gamma] = torch.where(pos < accept_lens.unsqueeze(1), draft_ids, -1)
    out_ids[rows, accept_lens.long()] = emitted
    return accept_lens.int(), out_ids


def confidence_survival_ref(conf_logits: torch.Tensor, sts_temperatures: torch.Tensor,
                            threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated confidence, prefix survival and static-threshold length in one pass.

    c_k = σ(logit_k / T_k) (Sequential Temperature Scaling, one T per block slot),
    a_k = Π_{i≤k} c_i (the probability that drafts 1..k are all accepted), and the threshold length
    = index of the first slot whose c_k < threshold (γ if none).

    Args:
        conf_logits:      [R, γ] float32 confidence-head logits.
        sts_temperatures: [γ] float32, all > 0 (ones = uncalibrated).
        threshold:        float in [0, 1].

    Returns:
        survival [R, γ] float32 (non-increasing along γ) and threshold_lens [R] int32 in [0, γ].
    """
    conf = torch.sigmoid(conf_logits.float() / sts_temperatures.float())
    survival = conf.cumprod(-1)
    threshold_lens = (conf >= threshold).int().cumprod(-1).sum(-1).int()
    return survival, threshold_lens


def _candidate_order(survival: torch.Tensor, min_len: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates (r, j), min_len ≤ j < max_len, a_{r,j} > 0, by a descending, then j, then r.

    Returns (rows [N], slots [N], a [N] float64) in admission order.
    """
    num_reqs, _ = survival.shape
    a = survival[:, min_len:max_len].double().t().reshape(-1)            # j-major: index = j*R + r
    slots = torch.arange(min_len, max_len, device=a.device).repeat_interleave(num_reqs)
    rows = torch.arange(num_reqs, device=a.device).repeat(max_len - min_len)
    keep = a > 0
    a, slots, rows = a[keep], slots[keep], rows[keep]
    order = torch.sort(a, descending=True, stable=True).indices          # stable: ties keep (j, r)
    return rows[order], slots[order], a[order]


def _lens_from_admitted(num_reqs: int, min_len: int, rows: torch.Tensor, slots: torch.Tensor,
                        device) -> torch.Tensor:
    lens = torch.full((num_reqs,), min_len, dtype=torch.int64, device=device)
    lens.scatter_reduce_(0, rows, slots + 1, reduce="amax")
    return lens.int()


def schedule_prefix_ref(survival: torch.Tensor, sps_table: torch.Tensor, min_len: int, max_len: int,
                        mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardware-aware prefix scheduler, DSpark paper Algorithm 1.

    Every request starts with ℓ_r = min_len: B = R·(1 + min_len) verify rows (anchor included) and
    expected tokens τ* = R + Σ_r Σ_{j<min_len} a_{r,j} (summed in row-major order). Candidates
    (r, j) with min_len ≤ j < max_len and a_{r,j} > 0 are admitted one at a time in the order
    a descending, then slot j ascending, then request r ascending (so prefixes stay contiguous);
    admitting (r, j) sets ℓ_r = j + 1, B += 1, τ* += a_{r,j}, Θ = τ*·SPS(B).
    mode="early_stop" (lossless, paper): stop at the first admission with Θ ≤ Θ_best, and keep the
    admissions before it. mode="global": walk the whole path and keep the prefix of it with the
    highest Θ (first one on ties), for budgets fixed from older confidence.

    Args:
        survival:  [R, γ] float32, a_{r,j} ∈ [0, 1], non-increasing along j.
        sps_table: [B_max+1] float (float64 math), SPS(B) = target verify steps/s at B rows,
                   positive and non-increasing, B_max ≥ R·(max_len + 1).
        min_len, max_len: 0 ≤ min_len ≤ max_len ≤ γ.
        mode: "early_stop" or "global".

    Returns:
        verify_lens [R] int32 in [min_len, max_len] and expected_throughput [] float64 (Θ of the
        chosen plan, tokens/s).
    """
    num_reqs = survival.shape[0]
    sps = sps_table.double()
    rows, slots, a = _candidate_order(survival, min_len, max_len)
    head = survival[:, :min_len].double().reshape(-1)
    tau0 = torch.cat([torch.tensor([float(num_reqs)], dtype=torch.float64, device=a.device), head]).cumsum(0)[-1]
    b0 = num_reqs * (1 + min_len)
    tau_path = torch.cat([tau0.view(1), a]).cumsum(0)                      # τ* after 0..N admissions
    b_path = b0 + torch.arange(a.numel() + 1, device=a.device)
    theta_path = tau_path * sps[b_path]
    if mode == "early_stop":
        improves = theta_path[1:] > theta_path[:-1]
        num_admitted = int(improves.int().cumprod(0).sum())
    elif mode == "global":
        num_admitted = int(theta_path.argmax())
    else:
        raise ValueError(f"mode must be one of {SCHEDULE_MODES}; got {mode!r}")
    lens = _lens_from_admitted(num_reqs, min_len, rows[:num_admitted], slots[:num_admitted], survival.device)
    return lens, theta_path[num_admitted].clone()


def schedule_topk_ref(survival: torch.Tensor, budget: int, min_len: int, max_len: int) -> torch.Tensor:
    """Production scheduler: a fixed total budget, top-K of the current survivals.

    `budget` K is the total number of draft tokens to verify in the batch (Σ_r ℓ_r), chosen from
    older confidence (e.g. Θ-argmax over two-steps-old survivals), so it does not depend on the
    current block. Every request gets min_len; the remaining K − R·min_len slots (none if negative)
    go to candidates in the order of `schedule_prefix_ref`. Prefix-consistent because a is
    non-increasing along j.

    Args:
        survival: [R, γ] float32.  budget: int ≥ 0.  min_len, max_len: 0 ≤ min_len ≤ max_len ≤ γ.

    Returns:
        verify_lens [R] int32 in [min_len, max_len].
    """
    num_reqs = survival.shape[0]
    rows, slots, _ = _candidate_order(survival, min_len, max_len)
    extra = max(0, budget - num_reqs * min_len)
    return _lens_from_admitted(num_reqs, min_len, rows[:extra], slots[:extra], survival.device)


PACK_COLUMNS = 16
"""Output columns per packed block of `pack_linear_weight`."""


def _pair_width(dtype: torch.dtype) -> int:
    """Consecutive K elements stored together per column: 2 for bfloat16 (one dword), 1 for float32."""
    if dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"packed linear weights must be bfloat16 or float32; got {dtype}")
    return 2 if dtype == torch.bfloat16 else 1


def pack_linear_weight_ref(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight [N, K] in the packed layout `packed_linear` reads.

    With P = 2 (bfloat16) or 1 (float32), Np = N rounded up to 16 and Kq = ⌈K / P⌉, the result is a
    contiguous [Np, Kq·P] tensor of the weight's dtype whose memory, read as [Np/16, Kq, 16, P], holds
    packed[b, q, j, p] = W[16·b + j, P·q + p] (0 past N or K): 16 output columns per block, and per
    block the K pairs in order — one AVX-512 vector per (block, pair).
    """
    num_out, num_in = weight.shape
    pair = _pair_width(weight.dtype)
    num_out_p, num_q = -(-num_out // PACK_COLUMNS) * PACK_COLUMNS, -(-num_in // pair)
    packed = torch.zeros(num_out_p // PACK_COLUMNS, num_q, PACK_COLUMNS, pair, dtype=weight.dtype,
                         device=weight.device)                                          # [Np/16, Kq, 16, P]
    rows = torch.arange(num_out, device=weight.device)
    block, lane = rows.div(PACK_COLUMNS, rounding_mode="floor"), rows % PACK_COLUMNS                # [N] each
    for p in range(pair):
        cols = weight[:, p::pair]                                                       # [N, ≤Kq] W[n, P·q+p]
        packed[block, :cols.shape[1], lane, p] = cols
    return packed.reshape(num_out_p, num_q * pair)


def unpack_linear_weight_ref(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Inverse of `pack_linear_weight_ref`: the [out_features, in_features] weight."""
    pair = _pair_width(packed.dtype)
    num_out_p, width = packed.shape
    blocks = packed.reshape(num_out_p // PACK_COLUMNS, width // pair, PACK_COLUMNS, pair)   # [Np/16, Kq, 16, P]
    return blocks.permute(0, 2, 1, 3).reshape(num_out_p, width)[:out_features, :in_features]


def packed_linear_ref(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                      out_features: int) -> torch.Tensor:
    """y = x · Wᵀ + bias with W given packed (`pack_linear_weight_ref`).

    Args:
        x: [M, K] bfloat16 or float32.  packed: [Np, ⌈K/P⌉·P] of x's dtype.  bias: [N] or None.
        out_features: N.

    Returns:
        [M, N] of x's dtype, accumulated in float32 and rounded once.
    """
    weight = unpack_linear_weight_ref(packed, out_features, x.shape[1])
    y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def sample_categorical_ref(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One inverse-CDF draw per row of a categorical distribution.

    Args:
        probs:    [N, V] float32, non-negative (need not sum to 1; each row is normalised by its total).
        uniforms: [N] float64 in [0, 1), one per row (e.g. `torch.rand(N, dtype=torch.float64, generator=g)`).
    Returns:
        ids [N] int64: the smallest i with c_i > u · c_{V-1}, where c = cumsum(probs[n]) in float64. A row
        whose threshold reaches the total by rounding takes its last token of positive probability; a row
        without positive finite mass gets -1. A token of probability 0 is never drawn.
        The native faces sum in blocks (same value up to float64 rounding, ~1e-16 of the total).

    Example:
        >>> sample_categorical_ref(torch.tensor([[0.0, 0.25, 0.75], [0.5, 0.5, 0.0]]),
        ...                        torch.tensor([0.3, 0.9999], dtype=torch.float64)).tolist()
        [2, 1]
    """
    cdf = probs.double().cumsum(-1)                                                  # [N, V]
    total = cdf[:, -1]                                                               # [N]
    x = (uniforms.double() * total).unsqueeze(1)                                      # [N, 1]
    ids = torch.searchsorted(cdf, x, right=True).squeeze(1)                          # [N] first c_i > x
    positions = torch.arange(probs.shape[1], device=probs.device)
    last_positive = torch.where(probs > 0, positions, -1).amax(dim=1)               # [N]
    ids = torch.minimum(ids, last_positive)
    valid = torch.isfinite(total) & (total > 0)
    return torch.where(valid, ids, torch.full_like(ids, -1))
