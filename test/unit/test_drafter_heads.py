"""Markov sequential heads (vanilla / gated / rnn / none) and the confidence head, inside propose."""
from __future__ import annotations

import pytest
import torch

from .checkpoint_factory import make_drafter, target_hidden
from dspark_sglang.drafter.markov_head import GatedMarkovHead, NoMarkovHead, RNNMarkovHead, VanillaMarkovHead
from dspark_sglang.sampling import SamplingBatch, logits_to_probs

HEAD_CLASSES = {"vanilla": VanillaMarkovHead, "gated": GatedMarkovHead, "rnn": RNNMarkovHead}


def _drafter_and_cache(**dspark):
    drafter, _ = make_drafter(**dspark)
    cache = drafter.new_cache(2)
    drafter.append_context(cache, 0, target_hidden(5, drafter.config), torch.arange(5))
    drafter.append_context(cache, 1, target_hidden(3, drafter.config, seed=4), torch.arange(3))
    return drafter, cache


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
def test_head_bias_depends_on_previous_token(head_type):
    drafter, _ = make_drafter(markov_head_type=head_type)
    head = drafter.markov_head
    assert type(head) is HEAD_CLASSES[head_type]
    h_k = torch.randn(2, drafter.config.hidden_size)
    state = head.init_state(h_k[:, None])
    bias_a, _ = head.step(h_k, torch.tensor([3, 3]), state)
    bias_b, _ = head.step(h_k, torch.tensor([4, 3]), state)
    assert bias_a.shape == (2, drafter.config.vocab_size) and bias_a.dtype == torch.float32
    assert (bias_a[0] - bias_b[0]).abs().max() > 1e-3          # row 0: prev token changed
    torch.testing.assert_close(bias_a[1], bias_b[1], rtol=0, atol=0)   # row 1: same prev, same bias


def test_vanilla_bias_by_hand():
    drafter, _ = make_drafter(markov_head_type="vanilla")
    w1, w2 = drafter.markov_head.markov_w1.weight, drafter.markov_head.markov_w2.weight   # [V, r], [V, r]
    bias, _ = drafter.markov_head.step(torch.zeros(1, drafter.config.hidden_size), torch.tensor([7]), None)
    torch.testing.assert_close(bias[0], w2 @ w1[7])


def test_gated_bias_by_hand_depends_on_hidden():
    drafter, _ = make_drafter(markov_head_type="gated")
    head = drafter.markov_head
    h = torch.randn(2, drafter.config.hidden_size)
    bias, _ = head.step(h, torch.tensor([7, 7]), None)
    e = head.markov_w1.weight[7]
    gate = torch.sigmoid(head.gate_proj(torch.cat([h[0], e])))
    torch.testing.assert_close(bias[0], head.markov_w2.weight @ (e * gate))
    assert (bias[0] - bias[1]).abs().max() > 1e-4               # same prev, different h_k


def test_rnn_state_update_by_hand():
    drafter, _ = make_drafter(markov_head_type="rnn")
    head, r = drafter.markov_head, drafter.config.markov_rank
    h = torch.randn(1, drafter.config.hidden_size)
    s0 = head.init_state(h[:, None])
    assert torch.equal(s0, torch.zeros(1, r))
    bias1, s1 = head.step(h, torch.tensor([5]), s0)
    g, c, o = head.joint_proj(torch.cat([s0[0], head.markov_w1.weight[5], h[0]])).split(r)
    torch.testing.assert_close(s1[0], torch.sigmoid(g) * s0[0] + (1 - torch.sigmoid(g)) * torch.tanh(c))
    torch.testing.assert_close(bias1[0], head.markov_w2.weight @ torch.tanh(o))
    bias2, _ = head.step(h, torch.tensor([5]), s1)              # same token and h, new state
    assert (bias2 - bias1).abs().max() > 1e-4


@pytest.mark.parametrize("head_type", ["vanilla", "gated", "rnn"])
def test_propose_q_is_base_plus_bias_of_previous_draft(head_type):
    """q_k = logits_to_probs(lm_head(h_k) + B_k(x_{k-1})) with x_{-1} = anchor, replayed step by step."""
    drafter, cache = _drafter_and_cache(markov_head_type=head_type)
    sampling = SamplingBatch.from_lists([0.0, 0.9], top_k=[0, 12], top_p=[1.0, 0.95])
    anchors = torch.tensor([11, 12])
    block = drafter.propose(cache, anchors, torch.tensor([5, 3]), sampling, torch.Generator().manual_seed(0),
                            keep_base_logits=True)
    h = drafter.block_hidden(cache, drafter.make_block_ids(anchors), torch.tensor([5, 3]))
    head, prev, state = drafter.markov_head, anchors, drafter.markov_head.init_state(h)
    for k in range(drafter.config.block_size):
        bias, state = head.step(h[:, k], prev, state)
        q = logits_to_probs(block.base_logits[:, k] + bias, sampling)
        torch.testing.assert_close(block.draft_probs[:, k], q)
        assert (q.gather(1, block.draft_ids[:, k:k + 1]) > 0).all()
        prev = block.draft_ids[:, k]
    # the bias is not zero: q differs from the parallel-only distribution
    assert not torch.allclose(block.draft_probs, logits_to_probs(block.base_logits, sampling), atol=1e-3)


def test_markov_rank_zero_is_plain_dflash():
    drafter, cache = _drafter_and_cache(markov_rank=0)
    assert isinstance(drafter.markov_head, NoMarkovHead)
    assert not any(n.startswith("markov_head.") for n in drafter.state_dict())
    assert drafter.confidence_head.proj.weight.shape == (1, drafter.config.hidden_size)
    sampling = SamplingBatch.from_lists([0.0, 1.0])
    block = drafter.propose(cache, torch.tensor([1, 2]), torch.tensor([5, 3]), sampling,
                            torch.Generator().manual_seed(0), keep_base_logits=True)
    torch.testing.assert_close(block.draft_probs, logits_to_probs(block.base_logits, sampling), rtol=0, atol=0)
    assert torch.equal(block.draft_ids[0], block.base_logits[0].argmax(-1))


def test_confidence_head_inputs():
    drafter, cache = _drafter_and_cache()
    anchors = torch.tensor([11, 12])
    block = drafter.propose(cache, anchors, torch.tensor([5, 3]), SamplingBatch.greedy(2))
    h = drafter.block_hidden(cache, drafter.make_block_ids(anchors), torch.tensor([5, 3]))
    w1 = drafter.markov_head.markov_w1.weight
    prev = torch.cat([anchors[:, None], block.draft_ids[:, :-1]], 1)       # x_{k-1}, slot 0 uses the anchor
    want = drafter.confidence_head.proj(torch.cat([h, w1[prev]], -1)).squeeze(-1)
    torch.testing.assert_close(block.conf_logits, want)
    assert block.confidence.shape == (2, drafter.config.block_size)

    plain, cache = _drafter_and_cache(confidence_head_with_markov=False)
    assert plain.confidence_head.proj.weight.shape == (1, plain.config.hidden_size)
    block = plain.propose(cache, anchors, torch.tensor([5, 3]), SamplingBatch.greedy(2))
    h = plain.block_hidden(cache, plain.make_block_ids(anchors), torch.tensor([5, 3]))
    torch.testing.assert_close(block.conf_logits, plain.confidence_head.proj(h).squeeze(-1))

    none, cache = _drafter_and_cache(enable_confidence_head=False)
    assert none.propose(cache, anchors, torch.tensor([5, 3]), SamplingBatch.greedy(2)).conf_logits is None
    assert not any(n.startswith("confidence_head.") for n in none.state_dict())
