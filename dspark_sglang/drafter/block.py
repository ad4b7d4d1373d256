"""`DraftBlock`: what one drafter step hands to scheduling and verification."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DraftBlock:
    """γ drafts per request, the distributions they were drawn from, and their confidence logits."""

    draft_ids: torch.Tensor
    """[R, γ] int64: x_1..x_γ (slot k predicts the token at anchor position + k + 1)."""
    draft_probs: torch.Tensor | None
    """[R, γ, V] float32: the corrected q_k each draft was sampled from, after the request's
    temperature / top-k / top-p (`sampling.logits_to_probs`). Verification must use exactly this q."""
    conf_logits: torch.Tensor | None
    """[R, γ] float32 confidence logits (σ gives c_k), or None without a confidence head."""
    base_logits: torch.Tensor | None = None
    """[R, γ, V] float32 parallel logits lm_head(h_k) before the Markov bias (diagnostics only)."""

    @property
    def num_reqs(self) -> int:
        return self.draft_ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.draft_ids.shape[1]

    @property
    def confidence(self) -> torch.Tensor | None:
        """[R, γ] float32 c_k = σ(conf_logits), or None."""
        return None if self.conf_logits is None else torch.sigmoid(self.conf_logits)
