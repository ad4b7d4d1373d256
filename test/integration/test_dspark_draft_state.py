"""Per-request draft contexts (dspark_sglang.serving.draft_state): stacking one-slot caches gives the same
drafts as one multi-slot cache, rollback on re-prefill, and release."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.sampling import SamplingBatch
from dspark_sglang.serving.draft_state import DraftContexts, StackedContext
from test.unit.checkpoint_factory import make_drafter, target_hidden


def _drafter():
    drafter, _ = make_drafter("llama", seed=0)
    return drafter


def test_stacked_matches_multi_slot_cache():
    """Requests with 5 and 9 committed tokens: drafts/probs/confidence equal those of a 2-slot cache."""
    drafter = _drafter()
    feats = [target_hidden(5, drafter.config, seed=1), target_hidden(9, drafter.config, seed=2)]
    contexts = DraftContexts(drafter)
    reference = drafter.new_cache(2)
    for r, f in enumerate(feats):
        contexts.extend(f"rid{r}", f, 0)
        drafter.append_context(reference, r, f, torch.arange(f.shape[0]))
    stacked = contexts.stacked(["rid0", "rid1"])
    assert isinstance(stacked, StackedContext) and stacked.batch_size == 2
    anchors, positions = torch.tensor([3, 7]), torch.tensor([5, 9])
    got = drafter.propose(stacked, anchors, positions, SamplingBatch.greedy(2))
    want = drafter.propose(reference, anchors, positions, SamplingBatch.greedy(2))
    assert torch.equal(got.draft_ids, want.draft_ids)
    torch.testing.assert_close(got.draft_probs, want.draft_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.conf_logits, want.conf_logits, rtol=1e-5, atol=1e-5)


def test_single_request_uses_its_cache_directly():
    drafter = _drafter()
    contexts = DraftContexts(drafter)
    contexts.extend("a", target_hidden(4, drafter.config), 0)
    assert contexts.stacked(["a"]) is contexts.get("a")


def test_incremental_extend_and_rollback():
    """Prefill 6, commit 2 more (positions 6, 7); a re-prefill from position 4 drops positions 4..7 first."""
    drafter = _drafter()
    contexts = DraftContexts(drafter)
    contexts.extend("a", target_hidden(6, drafter.config), 0)
    contexts.extend("a", target_hidden(2, drafter.config, seed=3), 6)
    cache = contexts.get("a")
    assert cache.lengths[0] == 8 and cache.positions[0, :8].tolist() == list(range(8))
    contexts.extend("a", target_hidden(3, drafter.config, seed=4), 4)
    assert cache.lengths[0] == 7 and cache.positions[0, :7].tolist() == list(range(7))
    assert contexts.num_cached_tokens() == 7


def test_gap_from_prefix_cache_is_kept_invisible():
    """A radix-cache hit extends from position 10 with no earlier features: only 10.. are cached."""
    drafter = _drafter()
    contexts = DraftContexts(drafter)
    contexts.extend("a", target_hidden(3, drafter.config), 10)
    assert contexts.get("a").positions[0, :3].tolist() == [10, 11, 12]
    block = drafter.propose(contexts.stacked(["a"]), torch.tensor([1]), torch.tensor([13]), SamplingBatch.greedy(1))
    assert block.draft_ids.shape == (1, drafter.config.block_size)


def test_drop_releases():
    drafter = _drafter()
    contexts = DraftContexts(drafter)
    contexts.extend("a", target_hidden(3, drafter.config), 0)
    contexts.drop("a")
    contexts.drop("never-seen")
    assert len(contexts) == 0


def test_extend_many_equals_extend_per_request():
    """One projection for a whole step: same caches as extending request by request, including a request
    with no new token, a fresh one and a rollback (re-prefill from position 2)."""
    drafter = _drafter()
    one, many = DraftContexts(drafter), DraftContexts(drafter)
    for contexts in (one, many):
        contexts.extend("a", target_hidden(4, drafter.config, seed=1), 0)
        contexts.extend("b", target_hidden(6, drafter.config, seed=2), 0)
    feats = {"a": target_hidden(3, drafter.config, seed=3), "b": target_hidden(2, drafter.config, seed=4),
             "c": target_hidden(5, drafter.config, seed=5), "d": target_hidden(0, drafter.config, seed=6)}
    starts = {"a": 4, "b": 2, "c": 0, "d": 7}
    for rid in feats:
        one.extend(rid, feats[rid], starts[rid])
    many.extend_many(list(feats), torch.cat(list(feats.values())), [f.shape[0] for f in feats.values()],
                     list(starts.values()))
    for rid in feats:
        x, y = one.get(rid), many.get(rid)
        assert x.lengths == y.lengths and torch.equal(x.positions, y.positions), rid
        for layer in range(x.num_layers):
            torch.testing.assert_close(x.keys[layer], y.keys[layer], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(x.values[layer], y.values[layer], rtol=1e-5, atol=1e-5)
    assert many.get("b").positions[0, :4].tolist() == [0, 1, 2, 3]      # 2..5 dropped, 2..3 re-cached
    with pytest.raises(ValueError, match="must be Σ counts"):
        many.extend_many(["a"], target_hidden(2, drafter.config), [3], [7])
