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


def _assert_same_contexts(x: DraftContexts, y: DraftContexts, rids) -> None:
    assert len(x) == len(y)
    for rid in rids:
        a, b = x.get(rid), y.get(rid)
        assert a.lengths == b.lengths, rid
        n = a.lengths[0]
        assert torch.equal(a.positions[0, :n], b.positions[0, :n]), rid
        for layer in range(a.num_layers):   # fp32 F.linear: a different row count may round differently
            torch.testing.assert_close(a.keys[layer][0, :, :n], b.keys[layer][0, :, :n], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.values[layer][0, :, :n], b.values[layer][0, :, :n], rtol=1e-5, atol=1e-5)


def test_deferred_steps_equal_eager_ones_and_project_once(monkeypatch):
    """Four decode steps queued with defer_many — a request that rolls back mid-queue (re-prefill from 5),
    one that finishes (dropped, its queued tokens discarded) and a new request under the finished one's id —
    give exactly the caches that extending at every step gives, with one projection at the flush."""
    drafter = _drafter()
    eager, deferred = DraftContexts(drafter), DraftContexts(drafter)
    for contexts in (eager, deferred):
        contexts.extend_many(["a", "b"], target_hidden(10, drafter.config, seed=1), [6, 4], [0, 0])
    steps = [  # (rids, counts, starts), then a drop of "b" after step 2
        (["a", "b"], [1, 2], [6, 4]),
        (["a", "b"], [3, 1], [7, 6]),
        (["a", "b"], [2, 1], [5, 7]),      # "a" rolls back to position 5
        (["a", "b"], [1, 0], [7, 8]),
    ]
    calls = []
    original = drafter.project_context
    monkeypatch.setattr(drafter, "project_context", lambda h, p: calls.append(h.shape[0]) or original(h, p))
    for i, (rids, counts, starts) in enumerate(steps):
        hidden = target_hidden(sum(counts), drafter.config, seed=10 + i)
        eager.extend_many(rids, hidden, counts, starts)
        deferred.defer_many(rids, hidden, counts, starts)
        if i == 2:
            for contexts in (eager, deferred):
                contexts.drop("b")
    for contexts in (eager, deferred):     # a new request reusing the id after the drop
        contexts.defer_many(["b"], target_hidden(3, drafter.config, seed=20), [3], [0])
    eager.flush()
    assert len(calls) == len(steps) + 1    # eager: one projection per step, plus its final flush
    calls.clear()
    stacked = deferred.stacked(["a", "b"])
    assert len(calls) == 1                 # deferred: one projection, at the read
    _assert_same_contexts(eager, deferred, ["a", "b"])
    assert deferred.get("a").positions[0, :8].tolist() == list(range(8))
    assert deferred.get("b").positions[0, :3].tolist() == [0, 1, 2]
    assert stacked.batch_size == 2


def test_a_finished_requests_queued_tokens_are_discarded():
    """A request that finishes with commits still queued does not come back at the next flush."""
    drafter = _drafter()
    contexts = DraftContexts(drafter)
    contexts.extend_many(["a", "b"], target_hidden(5, drafter.config), [3, 2], [0, 0])
    contexts.defer_many(["a", "b"], target_hidden(2, drafter.config, seed=2), [1, 1], [3, 2])
    contexts.drop("a")
    contexts.stacked(["b"])
    assert len(contexts) == 1 and "a" not in contexts._caches
    assert contexts.get("b").lengths == [3] and contexts.num_cached_tokens() == 3


def test_defer_flushes_by_itself_at_the_row_cap():
    drafter = _drafter()
    contexts = DraftContexts(drafter, max_pending_rows=5)
    contexts.defer_many(["a"], target_hidden(3, drafter.config), [3], [0])
    assert "a" not in contexts._caches
    contexts.defer_many(["a"], target_hidden(2, drafter.config, seed=2), [2], [3])
    assert contexts.get("a").lengths == [5] and not contexts._pending
    with pytest.raises(ValueError, match="must be Σ counts"):
        contexts.defer_many(["a"], target_hidden(2, drafter.config), [3], [7])
