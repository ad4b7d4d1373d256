"""Batched TRAINING forward of a `DSparkDrafter`: many anchors of many sequences in one pass.

Per sequence b with T tokens and N anchors p_1..p_N, the block n is [x_{p_n}, m, ..., m] at positions
p_n .. p_n+γ-1 (DSpark §3, anchor-first). All blocks of a sequence are laid side by side as N·γ
queries over ONE key sequence [context (T) ; blocks (N·γ)], with the mask

    query in block n sees   context key t   iff t < p_n        (committed tokens before the anchor)
                            block key (n', j) iff n' == n      (bidirectional inside its own block)

which is exactly what `DSparkDrafter.block_hidden` computes for one block from a context cache. The
context K/V go through each layer's own `context_kv`, the block through the layer's own modules, so
the trained parameters are the drafter's (no copy, same names, `save_drafter` saves them).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dspark_sglang.drafter.layers import DSparkDecoderLayer
from dspark_sglang.drafter.model import DSparkDrafter
from dspark_sglang.drafter.rope import apply_rope


def block_attention_mask(anchor_positions: torch.Tensor, anchor_valid: torch.Tensor, ctx_len: int,
                         block_size: int) -> torch.Tensor:
    """[B, N·γ, T + N·γ] bool attention mask over [context ; blocks].

    Args:
        anchor_positions: [B, N] int64 anchor position p_n of every block.
        anchor_valid:     [B, N] bool (padding blocks see only themselves, so no row is empty).
        ctx_len:          T.
        block_size:       γ.
    """
    num_seqs, num_blocks = anchor_positions.shape
    device = anchor_positions.device
    t = torch.arange(ctx_len, device=device)
    ctx = t.view(1, 1, -1) < anchor_positions.unsqueeze(-1)                          # [B, N, T]
    ctx = ctx & anchor_valid.unsqueeze(-1)
    ctx = ctx.repeat_interleave(block_size, dim=1)                                   # [B, Nγ, T]
    blk_id = torch.arange(num_blocks, device=device).repeat_interleave(block_size)   # [Nγ]
    blk = (blk_id.view(-1, 1) == blk_id.view(1, -1)).expand(num_seqs, -1, -1)      # [B, Nγ, Nγ]
    return torch.cat([ctx, blk], dim=-1)


def _layer_forward(layer: DSparkDecoderLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   ctx_k: torch.Tensor, ctx_v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`DSparkDecoderLayer.forward` with a per-query mask [B, Q, L+Q] instead of a per-request one."""
    attn = layer.self_attn
    h = layer.input_layernorm(x)                                                     # [B, Q, H]
    num_seqs, num_q, _ = h.shape
    q = attn.q_norm(attn.q_proj(h).view(num_seqs, num_q, attn.num_heads, attn.head_dim))
    q = apply_rope(q.transpose(1, 2), cos.unsqueeze(1), sin.unsqueeze(1))            # [B, Hq, Q, D]
    blk_k, blk_v = attn._kv(h, cos, sin)                                             # [B, Hkv, Q, D]
    k = torch.cat([ctx_k, blk_k], dim=2)                                             # [B, Hkv, T+Q, D]
    v = torch.cat([ctx_v, blk_v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1),
                                         enable_gqa=attn.num_heads != attn.num_kv_heads)  # [B, Hq, Q, D]
    x = x + attn.o_proj(out.transpose(1, 2).reshape(num_seqs, num_q, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def training_block_hidden(drafter: DSparkDrafter, ctx_features: torch.Tensor, input_ids: torch.Tensor,
                          anchor_positions: torch.Tensor, anchor_valid: torch.Tensor) -> torch.Tensor:
    """Final hidden states of all training blocks (with autograd).

    Args:
        drafter:          the drafter being trained.
        ctx_features:     [B, T, n·H] target features of every token (padding rows are never visible:
                          they sit at positions >= every valid anchor of their sequence).
        input_ids:        [B, T] int64 tokens.
        anchor_positions: [B, N] int64 anchors p_n (any value < T for padding blocks).
        anchor_valid:     [B, N] bool.
    Returns:
        h: [B, N, γ, H] after the final norm; h[b, n, k] predicts token p_n + k + 1.

    Example:
        >>> h = training_block_hidden(drafter, feats, ids, anchors, valid)   # [B, N, γ, H]  # doctest: +SKIP
    """
    cfg = drafter.config
    gamma = cfg.block_size
    num_seqs, ctx_len, _ = ctx_features.shape
    num_blocks = anchor_positions.shape[1]
    device = ctx_features.device
    ctx = drafter.hidden_norm(drafter.fc(ctx_features.to(drafter.dtype)))            # [B, T, H]
    ctx_cos, ctx_sin = drafter.rotary(torch.arange(ctx_len, device=device))         # [T, D]
    block_pos = anchor_positions.unsqueeze(-1) + torch.arange(gamma, device=device)  # [B, N, γ]
    cos, sin = drafter.rotary(block_pos.view(num_seqs, -1))                          # [B, Nγ, D]
    block_ids = torch.full((num_seqs, num_blocks, gamma), cfg.mask_token_id, dtype=torch.int64, device=device)
    block_ids[:, :, 0] = torch.gather(input_ids, 1, anchor_positions)                # x0 = token at p_n
    x = drafter.embed_tokens(block_ids.view(num_seqs, -1)).to(drafter.dtype)        # [B, Nγ, H]
    mask = block_attention_mask(anchor_positions, anchor_valid, ctx_len, gamma)     # [B, Nγ, T+Nγ]
    for layer in drafter.layers:
        ctx_k, ctx_v = layer.self_attn.context_kv(ctx, ctx_cos, ctx_sin)            # [B, Hkv, T, D]
        x = _layer_forward(layer, x, cos, sin, ctx_k, ctx_v, mask)
    return drafter.norm(x).view(num_seqs, num_blocks, gamma, -1)


def sample_anchors(loss_mask: torch.Tensor, max_anchors: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `max_anchors` anchors per sequence among positions p with loss_mask[p] and loss_mask[p+1].

    Args:
        loss_mask: [B, T] bool (answer tokens).
    Returns:
        anchor_positions [B, N] int64 (sorted; 0 for padding), anchor_valid [B, N] bool, N = max_anchors.
    """
    num_seqs, _ = loss_mask.shape
    ok = loss_mask[:, :-1] & loss_mask[:, 1:]                                        # [B, T-1]
    positions = torch.zeros(num_seqs, max_anchors, dtype=torch.int64)
    valid = torch.zeros(num_seqs, max_anchors, dtype=torch.bool)
    for b in range(num_seqs):
        cand = ok[b].nonzero().flatten().cpu()
        if cand.numel() > max_anchors:
            cand = cand[torch.randperm(cand.numel(), generator=generator)[:max_anchors]].sort().values
        positions[b, :cand.numel()] = cand
        valid[b, :cand.numel()] = True
    return positions.to(loss_mask.device), valid.to(loss_mask.device)
