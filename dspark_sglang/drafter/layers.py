"""Qwen3-style draft decoder layer with KV injection (DSpark §3 / DFlash).

Every layer attends from the γ block slots to [context K/V ; block K/V]. The context K/V of a
committed token comes from the projected target features through THIS layer's k_proj / v_proj
(+ k_norm, RoPE at the token's absolute position); see `DSparkAttention.context_kv`. Queries come
only from the block. Attention is bidirectional inside the block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dspark_sglang.drafter.config import DrafterConfig
from dspark_sglang.drafter.rope import apply_rope


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, statistics in float32 (as HF Qwen3RMSNorm)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))                                # [dim]
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class DSparkMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DSparkAttention(nn.Module):
    """GQA attention with per-head q/k RMSNorm, RoPE, and injected context K/V."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def _kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., S, H], cos/sin [..., S, D] -> k, v [..., Hkv, S, D] (k normed and rotated)."""
        shape = (*x.shape[:-1], self.num_kv_heads, self.head_dim)
        k = self.k_norm(self.k_proj(x).view(shape)).transpose(-3, -2)               # [..., Hkv, S, D]
        v = self.v_proj(x).view(shape).transpose(-3, -2)                             # [..., Hkv, S, D]
        return apply_rope(k, cos.unsqueeze(-3), sin.unsqueeze(-3)), v

    def context_kv(self, ctx: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Injected K/V of committed tokens: ctx [T, H] (fc + hidden_norm output), cos/sin [T, D]
        at their absolute positions -> k, v [Hkv, T, D]. Depends only on each token itself, so it is
        computed once per committed token and cached."""
        return self._kv(ctx, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx_k: torch.Tensor,
                ctx_v: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        """Block attention.

        Args:
            x:        [R, γ, H] normed block hidden states.
            cos, sin: [R, γ, D] RoPE tables at the block positions anchor_pos + j.
            ctx_k, ctx_v: [R, Hkv, L, D] cached context K/V (padded to L).
            ctx_mask: [R, L] bool, True where the context entry is visible (valid and position < anchor).
        Returns:
            [R, γ, H]
        """
        num_reqs, gamma, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(num_reqs, gamma, self.num_heads, self.head_dim))
        q = apply_rope(q.transpose(1, 2), cos.unsqueeze(1), sin.unsqueeze(1))       # [R, Hq, γ, D]
        blk_k, blk_v = self._kv(x, cos, sin)                                         # [R, Hkv, γ, D]
        k = torch.cat([ctx_k, blk_k], dim=2)                                         # [R, Hkv, L+γ, D]
        v = torch.cat([ctx_v, blk_v], dim=2)                                         # [R, Hkv, L+γ, D]
        blk_mask = torch.ones(num_reqs, gamma, dtype=torch.bool, device=x.device)   # bidirectional
        mask = torch.cat([ctx_mask, blk_mask], dim=1)[:, None, None, :]             # [R, 1, 1, L+γ]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             enable_gqa=self.num_heads != self.num_kv_heads)  # [R, Hq, γ, D]
        return self.o_proj(out.transpose(1, 2).reshape(num_reqs, gamma, -1))


class DSparkDecoderLayer(nn.Module):
    """Pre-norm attention + SwiGLU MLP, both residual (Qwen3DecoderLayer layout and names)."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.self_attn = DSparkAttention(config)
        self.mlp = DSparkMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ctx_k: torch.Tensor,
                ctx_v: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        """x [R, γ, H] -> [R, γ, H]; other args as `DSparkAttention.forward`."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx_k, ctx_v, ctx_mask)
        return x + self.mlp(self.post_attention_layernorm(x))
