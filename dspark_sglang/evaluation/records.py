"""Per-round and per-request records the evaluator collects (host-side Python data, JSON-friendly)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoundRecord:
    """One drafting + verification round of one request."""

    accept_len: int
    """Drafts accepted by verification (before any EOS / max-token truncation)."""
    verify_len: int
    """Drafts the target verified (ℓ ≤ γ)."""
    confidence: list[float] | None = None
    """[γ] c_k = σ(conf_logit_k / T_k) (STS temperatures, ones without), or None without a head."""


@dataclass
class RequestResult:
    """One prompt's speculative generation."""

    prompt_len: int
    output_ids: list[int] = field(default_factory=list)
    """Generated tokens (EOS included when the request ended on it), at most max_new_tokens."""
    rounds: list[RoundRecord] = field(default_factory=list)
    finished_by_eos: bool = False
