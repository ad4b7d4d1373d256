"""Confidence head (DSpark §3.2): c_k = σ(proj([h_k; W1[x_{k-1}]])), or σ(proj(h_k)) without the
Markov input. c_k estimates the probability that draft x_k is accepted given x_{<k} were."""
from __future__ import annotations

import torch
from torch import nn

from dspark_sglang.drafter.config import DrafterConfig


class ConfidenceHead(nn.Module):
    """`confidence_head.proj`: Linear(H + r → 1, bias) on [h_k; W1[x_{k-1}]] when
    `confidence_head_with_markov` (r = markov_rank, 0 without a Markov head), else Linear(H → 1) on h_k."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.with_markov = config.confidence_head_with_markov
        self.proj = nn.Linear(config.confidence_input_size, 1, bias=True)

    def forward(self, h: torch.Tensor, prev_features: torch.Tensor) -> torch.Tensor:
        """h [R, γ, H], prev_features [R, γ, r] = W1[x_{k-1}] -> logits [R, γ] float32 (apply σ for c_k)."""
        x = torch.cat([h, prev_features.to(h.dtype)], dim=-1) if self.with_markov else h  # [R, γ, H(+r)]
        return self.proj(x).squeeze(-1).float()
