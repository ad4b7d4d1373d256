"""Draft vocabulary (`draft_vocab.json`): drafts come only from the subset, q is the request's processed
distribution over the subset's logits (zero elsewhere), the pruned path agrees, the sidecar round-trips
through load_drafter, and a bad file is refused by name."""
from __future__ import annotations

import json

import pytest
import torch

from .checkpoint_factory import build_checkpoint, make_drafter, target_hidden
from dspark_sglang.drafter import load_drafter
from dspark_sglang.drafter.draft_vocab import DRAFT_VOCAB_FILE, read_draft_vocab, write_draft_vocab
from dspark_sglang.sampling import SamplingBatch, logits_to_probs


def _setup(head_type="vanilla", rank=4, num_reqs=3):
    drafter, _ = make_drafter(markov_head_type=head_type, markov_rank=rank, seed=7)
    cache = drafter.new_cache(num_reqs)
    for r in range(num_reqs):
        drafter.append_context(cache, r, target_hidden(4 + r, drafter.config, seed=r), torch.arange(4 + r))
    vocab = drafter.config.vocab_size
    subset = torch.arange(1, vocab, 3)                               # every third id
    return drafter, cache, subset, torch.tensor([2, 5, 9])[:num_reqs], torch.tensor([4, 5, 6])[:num_reqs]


@pytest.mark.parametrize("head_type, rank", [("vanilla", 4), ("gated", 4), ("rnn", 4), ("vanilla", 0)])
def test_drafts_and_q_are_restricted_to_the_draft_vocabulary(head_type, rank):
    drafter, cache, subset, anchors, pos = _setup(head_type, rank)
    sampling = SamplingBatch.from_lists([0.0, 0.8, 1.0], top_k=[0, 5, 0], top_p=[1.0, 1.0, 0.9])
    drafter.set_draft_vocab(subset)
    block = drafter.propose(cache, anchors, pos, sampling, torch.Generator().manual_seed(0))
    assert torch.isin(block.draft_ids, subset).all()
    outside = torch.ones(drafter.config.vocab_size, dtype=torch.bool)
    outside[subset] = False
    assert (block.draft_probs[..., outside] == 0).all()
    # replay: q_k = logits_to_probs over the subset's columns of lm_head(h_k) + B_k(x_{k-1})
    h = drafter.block_hidden(cache, drafter.make_block_ids(anchors), pos)
    head, prev = drafter.markov_head, anchors
    state = head.init_state(h) if rank else None
    for k in range(drafter.config.block_size):
        logits = drafter.lm_head(h[:, k])
        if rank:
            bias, state = head.step(h[:, k], prev, state)
            logits = logits + bias
        q = logits_to_probs(logits[:, subset], sampling)
        torch.testing.assert_close(block.draft_probs[:, k][:, subset], q, atol=1e-5, rtol=1e-5)
        prev = block.draft_ids[:, k]
    greedy = drafter.propose(cache, anchors, pos, SamplingBatch.greedy(3), need_probs=False)
    assert greedy.draft_probs is None and torch.isin(greedy.draft_ids, subset).all()
    drafter.set_draft_vocab(None)
    full = drafter.propose(cache, anchors, pos, SamplingBatch.greedy(3), need_probs=False)
    assert not torch.isin(full.draft_ids, subset).all(), "the subset must matter for this test to mean anything"


def test_pruned_path_agrees_over_a_draft_vocabulary():
    drafter, cache, subset, anchors, pos = _setup("rnn", 4)
    drafter.set_draft_vocab(subset)
    full = drafter.propose(cache, anchors, pos, SamplingBatch.greedy(3))
    alive = torch.sigmoid(full.conf_logits).cumprod(dim=1) > 0.2
    assert alive.any() and (~alive).any()
    pruned = drafter.propose(cache, anchors, pos, SamplingBatch.greedy(3), survival_floor=0.2)
    assert torch.equal(torch.isfinite(pruned.conf_logits), alive)
    assert torch.equal(pruned.draft_ids[alive], full.draft_ids[alive])
    torch.testing.assert_close(pruned.draft_probs[alive], full.draft_probs[alive])
    assert pruned.draft_probs.shape == full.draft_probs.shape and (pruned.draft_probs[~alive] == 0).all()


def test_sidecar_round_trip_and_errors(tmp_path):
    drafter, target = build_checkpoint(str(tmp_path), include_target_weights=False)
    assert read_draft_vocab(tmp_path, drafter.config.vocab_size) is None
    ids = torch.tensor([9, 3, 3, 40])
    write_draft_vocab(tmp_path, ids)
    assert json.loads((tmp_path / DRAFT_VOCAB_FILE).read_text()) == [3, 9, 40]
    loaded = load_drafter(str(tmp_path), target, drafter.embed_tokens, drafter.lm_head)
    assert loaded.draft_vocab_ids.tolist() == [3, 9, 40]
    (tmp_path / DRAFT_VOCAB_FILE).write_text(json.dumps([5, 4]))
    with pytest.raises(ValueError, match="strictly increasing"):
        load_drafter(str(tmp_path), target, drafter.embed_tokens, drafter.lm_head)
    (tmp_path / DRAFT_VOCAB_FILE).write_text(json.dumps({"ids": [0, drafter.config.vocab_size]}))
    with pytest.raises(ValueError, match=r"draft_vocab.json: ids must lie in \[0, vocab_size"):
        read_draft_vocab(tmp_path, drafter.config.vocab_size)
    (tmp_path / DRAFT_VOCAB_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match="not JSON"):
        read_draft_vocab(tmp_path, drafter.config.vocab_size)
