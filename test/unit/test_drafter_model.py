"""DSparkDrafter: block forward vs a naive reference, KV injection cache, visibility, bidirectional
block attention, shared target modules, ragged batching."""
from __future__ import annotations

import math

import pytest
import torch

from ..conftest import DEVICES
from .checkpoint_factory import make_drafter, target_hidden
from dspark_sglang.sampling import SamplingBatch


def _to(drafter, device):
    drafter.to(device)
    drafter.embed_tokens.to(device)     # not registered: moved explicitly, as the target would be
    drafter.lm_head.to(device)
    return drafter


def _naive_block_hidden(drafter, ctx_hidden, ctx_pos, block_ids, anchor_pos):
    """Independent float64 re-derivation of one request's block forward (DSpark §3 / Qwen3 layers):
    context = hidden_norm(fc(features)); per layer, K/V of [context; normed block] through the layer's
    own k_proj (+k_norm, RoPE at absolute positions) / v_proj; context at positions >= anchor hidden."""
    cfg = drafter.config
    w = {k: v.double().cpu() for k, v in drafter.state_dict().items()}
    eps, hq, hkv, d = cfg.rms_norm_eps, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def rms(x, weight):
        return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)

    def rope(x, pos):                                   # x [S, heads, D], pos [S]
        inv = cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = pos.double()[:, None] * inv               # [S, D/2]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    gamma = block_ids.shape[0]
    blk_pos = anchor_pos + torch.arange(gamma)
    ctx = rms(ctx_hidden.double() @ w["fc.weight"].T, w["hidden_norm.weight"])
    x = drafter.embed_tokens.weight.detach().double().cpu()[block_ids]
    visible = torch.cat([ctx_pos < anchor_pos, torch.ones(gamma, dtype=torch.bool)])
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(rms((h @ w[p + "self_attn.q_proj.weight"].T).view(gamma, hq, d), w[p + "self_attn.q_norm.weight"]),
                 blk_pos)
        src = torch.cat([ctx, h])
        k = rope(rms((src @ w[p + "self_attn.k_proj.weight"].T).view(-1, hkv, d), w[p + "self_attn.k_norm.weight"]),
                 torch.cat([ctx_pos, blk_pos]))
        v = (src @ w[p + "self_attn.v_proj.weight"].T).view(-1, hkv, d)
        heads = []
        for head in range(hq):
            kv = head // (hq // hkv)
            scores = q[:, head] @ k[:, kv].T / math.sqrt(d)
            scores = scores.masked_fill(~visible, float("-inf"))
            heads.append(scores.softmax(-1) @ v[:, kv])
        x = x + torch.cat(heads, dim=-1) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["norm.weight"])


@pytest.mark.parametrize("device", DEVICES)
def test_block_hidden_matches_naive_reference(device):
    drafter, _ = make_drafter("qwen3")
    _to(drafter, device)
    cfg = drafter.config
    feats = target_hidden(9, cfg)
    ctx_pos = torch.tensor([0, 1, 2, 4, 5, 7, 8, 11, 12])      # gaps; 11, 12 lie at/after the anchor
    anchor_pos = 11
    block_ids = torch.tensor([5, cfg.mask_token_id, 7, cfg.mask_token_id])   # arbitrary block
    cache = drafter.new_cache(1)
    drafter.append_context(cache, 0, feats.to(device), ctx_pos.to(device))
    h = drafter.block_hidden(cache, block_ids[None].to(device), torch.tensor([anchor_pos], device=device))
    ref = _naive_block_hidden(drafter, feats, ctx_pos, block_ids, anchor_pos)
    torch.testing.assert_close(h[0].double().cpu(), ref, rtol=1e-4, atol=1e-4)


def _propose_one(drafter, feats, positions, anchor_id, anchor_pos, sampling=None, chunks=None):
    cache = drafter.new_cache(1, initial_capacity=2)
    chunks = chunks or [feats.shape[0]]
    start = 0
    for size in chunks:
        drafter.append_context(cache, 0, feats[start:start + size], positions[start:start + size])
        start += size
    return drafter.propose(cache, torch.tensor([anchor_id]), torch.tensor([anchor_pos]),
                           sampling or SamplingBatch.greedy(1), keep_base_logits=True)


def test_incremental_append_equals_all_at_once():
    drafter, _ = make_drafter()
    feats = target_hidden(11, drafter.config)
    pos = torch.arange(11)
    full = _propose_one(drafter, feats, pos, 3, 11)
    for chunks in ([1] * 11, [3, 1, 4, 3]):               # initial capacity 2: buffers grow while appending
        inc = _propose_one(drafter, feats, pos, 3, 11, chunks=chunks)
        torch.testing.assert_close(inc.base_logits, full.base_logits, rtol=1e-5, atol=1e-5)  # float32 TOL: BLAS paths differ by T
        assert torch.equal(inc.draft_ids, full.draft_ids)


def test_context_at_or_after_anchor_is_invisible_and_context_matters():
    drafter, _ = make_drafter()
    feats = target_hidden(10, drafter.config)
    pos = torch.arange(10)
    only_before = _propose_one(drafter, feats[:6], pos[:6], 3, 6).base_logits
    with_later = _propose_one(drafter, feats, pos, 3, 6).base_logits          # positions 6..9 cached too
    torch.testing.assert_close(with_later, only_before, rtol=1e-5, atol=1e-5)  # float32 TOL: BLAS paths differ by T
    changed = feats.clone()
    changed[2] += 1.0                                                          # a visible token differs
    assert not torch.allclose(_propose_one(drafter, changed[:6], pos[:6], 3, 6).base_logits, only_before,
                              atol=1e-3)


def test_block_attention_is_bidirectional():
    """Slot 0's output depends on a LATER block slot (a causal block would not)."""
    drafter, _ = make_drafter()
    m = drafter.config.mask_token_id
    cache = drafter.new_cache(1)
    drafter.append_context(cache, 0, target_hidden(4, drafter.config), torch.arange(4))
    anchor = torch.tensor([4])
    h1 = drafter.block_hidden(cache, torch.tensor([[3, m, m, m]]), anchor)
    h2 = drafter.block_hidden(cache, torch.tensor([[3, m, m, 9]]), anchor)
    assert (h1[0, 0] - h2[0, 0]).abs().max() > 1e-3


def test_rope_uses_absolute_positions_of_context():
    """Moving context tokens to other positions (same anchor) changes the block output."""
    drafter, _ = make_drafter()
    feats = target_hidden(4, drafter.config)
    a = _propose_one(drafter, feats, torch.tensor([0, 1, 2, 3]), 3, 10).base_logits
    b = _propose_one(drafter, feats, torch.tensor([6, 7, 8, 9]), 3, 10).base_logits
    assert not torch.allclose(a, b, atol=1e-3)


def test_target_modules_are_referenced_not_registered():
    drafter, _ = make_drafter()
    names = set(drafter.state_dict())
    assert not any(n.startswith(("embed_tokens", "lm_head")) for n in names)
    params = {id(p) for p in drafter.parameters()}
    assert id(drafter.embed_tokens.weight) not in params and id(drafter.lm_head.weight) not in params
    drafter.double()
    assert drafter.fc.weight.dtype == torch.float64 and drafter.lm_head.weight.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_batched_ragged_contexts_equal_per_request(device):
    drafter, _ = make_drafter(markov_head_type="rnn")
    _to(drafter, device)
    lengths, anchors = [3, 8, 0], [7, 1, 12]
    feats = [target_hidden(n, drafter.config, seed=10 + i).to(device) for i, n in enumerate(lengths)]
    batched = drafter.new_cache(3, initial_capacity=4)
    for r in (1, 0, 2):
        if lengths[r]:
            drafter.append_context(batched, r, feats[r], torch.arange(lengths[r], device=device))
    anchor_pos = torch.tensor(lengths, device=device)
    for temps in ([0.0, 0.0, 0.0], [0.8, 1.0, 0.6]):
        sampling = SamplingBatch.from_lists(temps, top_k=[0, 10, 0], device=device)
        blk = drafter.propose(batched, torch.tensor(anchors, device=device), anchor_pos, sampling)
        for r in range(3):
            single = drafter.new_cache(1)
            if lengths[r]:
                drafter.append_context(single, r * 0, feats[r], torch.arange(lengths[r], device=device))
            one = drafter.propose(single, torch.tensor([anchors[r]], device=device), anchor_pos[r:r + 1],
                                  SamplingBatch.from_lists([temps[r]], [[0, 10, 0][r]], device=device))
            # slot 0's q does not depend on sampled tokens; all slots are comparable for greedy rows
            slots = blk.block_size if temps[r] == 0 else 1
            torch.testing.assert_close(blk.draft_probs[r, :slots], one.draft_probs[0, :slots], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(blk.conf_logits[r, :slots], one.conf_logits[0, :slots], rtol=1e-5, atol=1e-5)
            if temps[r] == 0:
                assert torch.equal(blk.draft_ids[r], one.draft_ids[0])


def test_cache_truncate_reset_drop():
    drafter, _ = make_drafter()
    feats = target_hidden(8, drafter.config)
    cache = drafter.new_cache(1)
    drafter.append_context(cache, 0, feats, torch.arange(8))
    cache.truncate(0, 5)
    assert cache.lengths == [5]
    got = drafter.propose(cache, torch.tensor([2]), torch.tensor([9]), SamplingBatch.greedy(1), keep_base_logits=True)
    want = _propose_one(drafter, feats[:5], torch.arange(5), 2, 9)
    torch.testing.assert_close(got.base_logits, want.base_logits, rtol=1e-5, atol=1e-5)  # float32 TOL: BLAS paths differ by T
    cache.drop(0)
    assert cache.lengths == [0] and cache.active == [False]
    cache.reset(0)
    empty = drafter.propose(cache, torch.tensor([2]), torch.tensor([9]), SamplingBatch.greedy(1), keep_base_logits=True)
    fresh = drafter.propose(drafter.new_cache(1), torch.tensor([2]), torch.tensor([9]), SamplingBatch.greedy(1),
                            keep_base_logits=True)
    torch.testing.assert_close(empty.base_logits, fresh.base_logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="length must be in"):
        cache.truncate(0, 3)


def test_propose_rejects_mismatched_batch():
    drafter, _ = make_drafter()
    cache = drafter.new_cache(2)
    with pytest.raises(ValueError, match="cache's 2 requests"):
        drafter.propose(cache, torch.tensor([1]), torch.tensor([0]), SamplingBatch.greedy(1))
    with pytest.raises(ValueError, match="target embed_tokens.weight must be"):
        type(drafter)(drafter.config, torch.nn.Embedding(10, 32), drafter.lm_head)
