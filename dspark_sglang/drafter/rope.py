"""Rotary position embedding at absolute positions (HF "rotate_half" layout, as Qwen3 / Llama)."""
from __future__ import annotations

import math

import torch
from torch import nn

from dspark_sglang.drafter.config import DrafterConfig


def rope_inv_freq(config: DrafterConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """[head_dim/2] float32 inverse frequencies, with "linear" or "llama3" scaling when configured."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    scaling = config.rope_scaling or {}
    if config.rope_type == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif config.rope_type == "llama3":
        # Llama 3.1: long wavelengths divided by `factor`, short ones kept, smooth blend in between.
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq                                           # [D/2]
        smooth = ((old_len / wavelen) - low) / (high - low)                        # [D/2]
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / low, inv_freq / factor,
                               torch.where(wavelen < old_len / high, inv_freq, blended))
    return inv_freq


class RotaryEmbedding(nn.Module):
    """cos/sin tables computed on the fly for arbitrary absolute positions."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)  # [D/2]

    def reset_inv_freq(self, device: torch.device | str) -> None:
        """Recompute the (non-persistent) buffer, e.g. after building the module on the meta device."""
        self.inv_freq = rope_inv_freq(self.config, device)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [...] int64 -> (cos, sin), each [..., head_dim] float32."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq                    # [..., D/2]
        emb = torch.cat([freqs, freqs], dim=-1)                                    # [..., D]
        return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., S, D] by cos/sin broadcastable to it; computed in float32, returned in x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)                # rotate_half
    return (xf * cos + rotated * sin).to(x.dtype)
