"""propose(): greedy determinism, sampled drafts follow the returned q (chi-square, fixed seed)."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from .checkpoint_factory import make_drafter, target_hidden
from dspark_sglang.sampling import SamplingBatch


def _chi2_pvalue(ids: torch.Tensor, q: torch.Tensor) -> float:
    """Goodness of fit of draws `ids` [N] to `q` [V]; bins with expected count < 5 are merged."""
    n = ids.shape[0]
    counts = torch.bincount(ids, minlength=q.shape[0]).double()
    expected = q.double() * n
    assert counts[expected == 0].sum() == 0, "a draft was drawn where q is 0"
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    return float(chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


def test_greedy_propose_is_deterministic_and_argmax_of_q():
    drafter, _ = make_drafter(markov_head_type="gated")
    cache = drafter.new_cache(1)
    drafter.append_context(cache, 0, target_hidden(6, drafter.config), torch.arange(6))
    args = (cache, torch.tensor([9]), torch.tensor([6]), SamplingBatch.greedy(1))
    a = drafter.propose(*args, generator=torch.Generator().manual_seed(0))
    b = drafter.propose(*args, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a.draft_ids, b.draft_ids) and torch.equal(a.draft_probs, b.draft_probs)
    assert torch.equal(a.draft_ids, a.draft_probs.argmax(-1))
    assert a.draft_ids.dtype == torch.int64 and a.draft_probs.dtype == torch.float32
    assert a.draft_ids.shape == (1, drafter.config.block_size)
    assert a.draft_probs.shape == (1, drafter.config.block_size, drafter.config.vocab_size)


def test_need_probs_false_skips_softmax_only_for_all_greedy_batches():
    """The serving worker's greedy fast path: same ids as the full path, no q; a batch with a sampled request
    still gets its q."""
    for head in ("vanilla", "gated", "rnn", None):
        drafter, _ = make_drafter(markov_head_type=head or "vanilla", markov_rank=0 if head is None else 4)
        cache = drafter.new_cache(2)
        for r in range(2):
            drafter.append_context(cache, r, target_hidden(6, drafter.config), torch.arange(6))
        ids, pos = torch.tensor([9, 4]), torch.tensor([6, 6])
        full = drafter.propose(cache, ids, pos, SamplingBatch.greedy(2))
        fast = drafter.propose(cache, ids, pos, SamplingBatch.greedy(2), need_probs=False)
        assert fast.draft_probs is None and torch.equal(fast.draft_ids, full.draft_ids)
        mixed = SamplingBatch.from_lists([0.0, 1.0])
        block = drafter.propose(cache, ids, pos, mixed, generator=torch.Generator().manual_seed(0), need_probs=False)
        assert block.draft_probs is not None and torch.equal(block.draft_ids[0], full.draft_ids[0])


def _survival(conf_logits: torch.Tensor, temps: torch.Tensor, biases=0.0) -> torch.Tensor:
    return torch.sigmoid(conf_logits / temps + biases).cumprod(dim=1)


def _split_floor(survival: torch.Tensor) -> float:
    """A floor halfway between the two middle survivals: no slot sits on it, so rounding differences
    between this test's survival and propose's own cannot move a slot across it (a floor AT the median
    did, on another CPU)."""
    s = survival.flatten().sort().values
    mid = s.numel() // 2
    assert s[mid] - s[mid - 1] > 1e-5, "the middle survivals must be distinct for the split to be clean"
    return float(s[mid - 1] + s[mid]) / 2


def _six_requests(head: str):
    """A rank-4 drafter with `head` and a cache of six requests with 5..10 committed tokens; returns
    (drafter, cache, anchor ids [6], anchor positions [6])."""
    drafter, _ = make_drafter(markov_head_type=head, markov_rank=4, seed=5)
    num_reqs = 6
    cache = drafter.new_cache(num_reqs)
    for r in range(num_reqs):
        drafter.append_context(cache, r, target_hidden(5 + r, drafter.config, seed=r), torch.arange(5 + r))
    return drafter, cache, torch.arange(3, 3 + num_reqs), torch.arange(5, 5 + num_reqs)


def test_pruned_propose_drafts_exactly_the_surviving_slots():
    """survival_floor > 0: slots whose prefix survival (with STS temperatures) stays above the floor carry the
    unpruned ids, confidence logits and q; the rest are −inf / 0 and no longer drafted; keep_slots are kept."""
    for head in ("vanilla", "gated", "rnn"):
        drafter, cache, ids, pos = _six_requests(head)
        num_reqs, gamma = 6, drafter.config.block_size
        temps = torch.linspace(0.5, 2.0, gamma)
        biases = torch.linspace(1.0, -1.0, gamma)      # the online calibration's offsets
        full = drafter.propose(cache, ids, pos, SamplingBatch.greedy(num_reqs))
        for keep_slots, b in ((0, None), (1, None), (0, biases)):
            a = _survival(full.conf_logits, temps, 0.0 if b is None else b)
            floor = _split_floor(a)
            pruned = drafter.propose(cache, ids, pos, SamplingBatch.greedy(num_reqs), survival_floor=floor,
                                     sts_temperatures=temps, keep_slots=keep_slots, sts_biases=b)
            alive = a > floor
            alive[:, :keep_slots] = True
            assert alive.any() and (~alive).any(), "the floor must split the slots for this test to mean anything"
            drafted = torch.isfinite(pruned.conf_logits)
            assert torch.equal(drafted, alive), head
            assert torch.equal(pruned.draft_ids[alive], full.draft_ids[alive])
            assert torch.allclose(pruned.conf_logits[alive], full.conf_logits[alive], atol=1e-6)
            assert torch.allclose(pruned.draft_probs[alive], full.draft_probs[alive], atol=1e-6)
            assert (pruned.draft_probs[~alive] == 0).all() and (pruned.draft_ids[~alive] == 0).all()
        a = _survival(full.conf_logits, temps)
        floor = _split_floor(a)
        fast = drafter.propose(cache, ids, pos, SamplingBatch.greedy(num_reqs), need_probs=False,
                               survival_floor=floor, sts_temperatures=temps)
        assert fast.draft_probs is None
        assert torch.equal(fast.draft_ids[a > floor], full.draft_ids[a > floor])


def test_pruned_propose_sampled_rows_follow_their_q():
    """Sampled requests under pruning: each drafted slot's draw has positive q and its q is a distribution."""
    drafter, _ = make_drafter(markov_head_type="vanilla", markov_rank=4, seed=2)
    cache = drafter.new_cache(3)
    for r in range(3):
        drafter.append_context(cache, r, target_hidden(6, drafter.config, seed=r), torch.arange(6))
    sampling = SamplingBatch.from_lists([1.0, 0.0, 0.7], top_k=[0, 0, 20])
    block = drafter.propose(cache, torch.tensor([4, 5, 6]), torch.tensor([6, 6, 6]), sampling,
                            generator=torch.Generator().manual_seed(0), survival_floor=1e-3)
    drafted = torch.isfinite(block.conf_logits)
    assert drafted[:, 0].all()
    q = block.draft_probs[drafted]                                              # [n, V]
    assert torch.allclose(q.sum(-1), torch.ones(q.shape[0]), atol=1e-5)
    assert (q.gather(1, block.draft_ids[drafted].unsqueeze(1)) > 0).all()


def test_sampled_drafts_follow_q():
    """N identical requests in one batch: slot-0 draws must follow the shared q_0 (chi-square), and
    among rows that drew the most common x_0, slot-1 draws must follow their (shared) q_1."""
    drafter, _ = make_drafter(markov_head_type="vanilla", seed=3)
    num = 4000
    cache = drafter.new_cache(num)
    kv = drafter.project_context(target_hidden(4, drafter.config), torch.arange(4))
    for r in range(num):
        cache.append_kv(r, kv, torch.arange(4))
    sampling = SamplingBatch.from_lists([1.5] * num, top_k=[24] * num, top_p=[0.97] * num)
    block = drafter.propose(cache, torch.full((num,), 5), torch.full((num,), 4), sampling,
                            torch.Generator().manual_seed(0))
    torch.testing.assert_close(block.draft_probs.sum(-1), torch.ones(num, drafter.config.block_size))
    q0 = block.draft_probs[0, 0]
    torch.testing.assert_close(block.draft_probs[:, 0], q0.expand(num, -1), rtol=0, atol=1e-6)
    assert (q0 > 0.005).sum() >= 5, "q_0 too peaked for a meaningful test"
    assert _chi2_pvalue(block.draft_ids[:, 0], q0) > 1e-3
    # the test can tell: the parallel-only (bias-free) or uniform distribution would be rejected
    uniform = (q0 > 0).float() / (q0 > 0).sum()
    assert _chi2_pvalue(block.draft_ids[:, 0], uniform) < 1e-6

    x0 = block.draft_ids[:, 0].mode().values
    rows = block.draft_ids[:, 0] == x0
    q1 = block.draft_probs[rows, 1]
    torch.testing.assert_close(q1, q1[:1].expand_as(q1), rtol=0, atol=1e-6)
    assert _chi2_pvalue(block.draft_ids[rows, 1], q1[0]) > 1e-3


def test_seeded_sampling_is_reproducible():
    drafter, _ = make_drafter(markov_head_type="rnn")
    cache = drafter.new_cache(3)
    for r in range(3):
        drafter.append_context(cache, r, target_hidden(2 + r, drafter.config, seed=r), torch.arange(2 + r))
    args = (cache, torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4]), SamplingBatch.from_lists([1.0, 0.7, 1.2]))
    a = drafter.propose(*args, generator=torch.Generator().manual_seed(7))
    b = drafter.propose(*args, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.draft_ids, b.draft_ids)
    assert torch.equal(a.draft_probs, b.draft_probs)


@pytest.mark.parametrize("head", ["vanilla", "gated", "rnn"])
@pytest.mark.parametrize("rows_per_call", [1, 5, 10**6])
def test_pruned_head_chunks_change_no_draft_and_skip_pruned_slots(monkeypatch, rows_per_call, head):
    """Whatever the draft-head chunking (one slot per call, mixed, all slots at once), pruned drafting gives
    the same ids and confidences; with one slot per call the head computes exactly the drafted slots."""
    import dspark_sglang.drafter.model as drafter_model

    drafter, cache, ids, pos = _six_requests(head)
    num_reqs, gamma = 6, drafter.config.block_size
    temps = torch.linspace(0.5, 2.0, gamma)
    full = drafter.propose(cache, ids, pos, SamplingBatch.greedy(num_reqs))
    floor = _split_floor(_survival(full.conf_logits, temps))
    head_rows = []
    original = drafter.draft_logits
    monkeypatch.setattr(drafter, "draft_logits", lambda h: head_rows.append(h.shape[0] * h.shape[1]) or original(h))
    monkeypatch.setattr(drafter_model, "HEAD_ROWS_PER_CALL", rows_per_call)
    pruned = drafter.propose(cache, ids, pos, SamplingBatch.greedy(num_reqs), survival_floor=floor,
                             sts_temperatures=temps)
    alive = torch.isfinite(pruned.conf_logits)
    assert alive.any() and (~alive).any()
    assert torch.equal(pruned.draft_ids[alive], full.draft_ids[alive])
    assert torch.allclose(pruned.conf_logits[alive], full.conf_logits[alive], atol=1e-6)
    if rows_per_call == 1:
        assert sum(head_rows) == int(alive.sum())
    elif rows_per_call == 10**6:
        assert len(head_rows) == 1 and head_rows[0] == int(alive[:, 0].sum()) * gamma
