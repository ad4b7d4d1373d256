"""Prompt-lookup drafts: the continuation search, the history sync, the acceptance tables, and that
verifying a one-hot lookup block with the native sampled-verify op reproduces the target distribution."""
from __future__ import annotations

from array import array

import numpy as np
import pytest
import torch

from dspark_sglang import ops
from dspark_sglang.ops import native
from dspark_sglang.serving.prompt_lookup import (LookupAcceptance, LookupBlock, PromptLookup, TokenHistory,
                                                 find_continuation, match_bucket)


def test_longest_suffix_wins_then_most_recent_occurrence():
    #            0  1  2  3  4  5  6  7  8  9 10 11
    h = np.array([1, 2, 3, 9, 2, 3, 8, 7, 1, 2, 3, 0])
    assert find_continuation(h, 4, n_max=3, n_min=2) is None           # "3 0" never occurred before
    h = np.array([1, 2, 3, 9, 2, 3, 8, 7, 1, 2, 3])
    got = find_continuation(h, 4, n_max=3, n_min=2)
    assert got.match_len == 3 and got.tokens.tolist() == [9, 2, 3, 8]  # "1 2 3" at 0 beats the later "2 3" at 4
    got = find_continuation(h, 4, n_max=2, n_min=2)                   # n = 2 finds both "2 3"; the one at 1
    assert got.match_len == 3 and got.tokens.tolist() == [9, 2, 3, 8]  # extends back to "1 2 3": it wins
    h = np.array([4, 2, 3, 9, 4, 2, 3, 8, 7, 4, 2, 3])
    got = find_continuation(h, 2, n_max=2, n_min=2)                   # "4 2 3" at 0 and 4: equally long,
    assert got.match_len == 3 and got.tokens.tolist() == [8, 7]        # the most recent wins


def test_match_length_is_measured_back_to_the_cap_and_bucketed():
    rng = np.random.default_rng(0)
    quoted = rng.integers(100, 200, size=40)                           # a 40-token span, quoted again later
    h = np.concatenate([quoted, [7, 8, 9], rng.integers(300, 400, size=20), quoted[:30]])
    got = find_continuation(h, 5, n_max=4, n_min=2)
    assert got.tokens.tolist() == quoted[30:35].tolist() and got.match_len == 30
    assert find_continuation(h, 5, n_max=4, n_min=2, max_match=12).match_len == 12
    assert [match_bucket(n) for n in (2, 3, 4, 5, 6, 9, 10, 17, 18, 30)] == [2, 3, 4, 4, 6, 6, 10, 10, 18, 18]
    acc = LookupAcceptance(gamma=2, prior=0.5, prior_weight=2.0)
    acc.record(12, True, verified=2, accepted=2)                       # lengths 10-17 share a table
    np.testing.assert_allclose(acc.rates(15, True), [2 / 3, 2 / 3])                # (1 + 0.5·2) / (1 + 2)
    np.testing.assert_allclose(acc.rates(9, True), [0.5, 0.5])


def _longest_match_by_definition(h, gamma, n_max, n_min, max_match):
    """find_continuation's contract spelled out: for the largest n in [n_min, n_max] whose last-n-token suffix
    occurred before, each occurrence ending at e (< the end) matches back L = the most tokens (≤ max_match) for
    which h[e−L+1..e] equals the history's last L; the longest wins, the latest among equals."""
    size = len(h)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        best = None
        for start in range(size - n):
            if list(h[start:start + n]) != list(h[size - n:]):
                continue
            end, length = start + n - 1, n
            while length < max_match and end - length >= 0 and h[end - length] == h[size - 1 - length]:
                length += 1
            if best is None or length >= best[0]:
                best = (length, end)
        if best is not None:
            return best[0], list(h[best[1] + 1:best[1] + 1 + gamma])
    return None


@pytest.mark.parametrize("max_match", [4, 31, 32, 33, 70, 256])
def test_backward_match_agrees_with_its_definition_across_chunk_boundaries(max_match):
    rng = np.random.default_rng(max_match)
    for _ in range(300):
        if rng.random() < 0.5:                                        # a long quote: matches run past a chunk
            span = rng.integers(0, 3, size=int(rng.integers(20, 120)))
            h = np.concatenate([span, rng.integers(0, 3, size=int(rng.integers(0, 5))), span[:int(rng.integers(2, span.size))]])
        else:
            h = rng.integers(0, 4, size=int(rng.integers(1, 90)))
        got = find_continuation(h, 5, n_max=4, n_min=2, max_match=max_match)
        want = _longest_match_by_definition(h, 5, 4, 2, max_match)
        assert (None if got is None else (got.match_len, got.tokens.tolist())) == want, (h.tolist(), max_match)


def test_continuation_is_cut_at_the_end_and_may_overlap_the_suffix():
    h = np.array([5, 5, 5, 5])
    got = find_continuation(h, 6, n_max=3, n_min=2)
    assert got.match_len == 3 and got.tokens.tolist() == [5]           # only one token follows "5 5 5" at 0
    assert find_continuation(np.array([4]), 3, 3, 1) is None


def test_token_history_grows_and_keeps_tokens():
    hist = TokenHistory()
    hist.extend(range(200))
    hist.extend(range(200, 600))
    assert hist.tokens.tolist() == list(range(600)) and hist.buf.size >= 600


def test_propose_syncs_outputs_incrementally_and_appends_a_missing_anchor():
    lookup = PromptLookup(gamma=3, n_max=2, n_min=2)
    prompt = [7, 8, 9, 10, 11]
    assert lookup.propose("r", prompt, array("q"), anchor=7) is None      # anchor not yet among outputs
    got = lookup.propose("r", prompt, array("q", [7]), anchor=8)          # history 7 8 9 10 11 7 | 8
    assert got.tokens.tolist() == [9, 10, 11] and lookup.histories["r"].size == 6
    lookup.propose("r", prompt, array("q", [7, 8, 9]), anchor=9)
    assert lookup.histories["r"].tokens.tolist() == prompt + [7, 8, 9]
    lookup.propose("r", prompt, array("q", [1]), anchor=1)                # outputs reset (shorter): rebuilt
    assert lookup.histories["r"].tokens.tolist() == prompt + [1]
    lookup.drop("r")
    assert "r" not in lookup.histories
    with pytest.raises(ValueError, match="n_min"):
        PromptLookup(gamma=3, n_max=1, n_min=2)


def test_acceptance_counts_only_slots_verified_behind_an_accepted_prefix():
    acc = LookupAcceptance(gamma=4, prior=0.5, prior_weight=2.0)
    acc.record(3, True, verified=4, accepted=1)        # slot 1 accepted, slot 2 rejected, 3-4 unseen
    acc.record(3, True, verified=2, accepted=2)        # both verified slots accepted
    rates = acc.rates(3, True)
    np.testing.assert_allclose(rates, [(2 + 1) / (2 + 2), (1 + 1) / (2 + 2), 0.5, 0.5])
    np.testing.assert_allclose(acc.rates(3, False), 0.5)                 # sampled requests: their own table
    block = LookupBlock(tokens=np.array([1, 2, 3]), match_len=3)
    np.testing.assert_allclose(acc.survival(block, True), [0.75, 0.375, 0.1875, 0.0])
    acc.record(2, True, verified=0, accepted=0)                          # nothing verified: no change
    np.testing.assert_allclose(acc.rates(2, True), 0.5)


def test_forgetting_brings_a_losing_table_back_to_its_prior():
    acc = LookupAcceptance(gamma=1, memory=10.0, prior=0.8, prior_weight=2.0)
    for _ in range(50):
        acc.record(2, True, verified=1, accepted=0)
    assert acc.rates(2, True)[0] < 0.05                                   # rejected again and again
    for _ in range(100):                                                   # matches that lost to the drafter
        acc.forget(2, True)
    assert acc.rates(2, True)[0] > 0.75                                   # the prior is back: verify once more


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_one_hot_lookup_block_verifies_to_the_target_distribution(device):
    """A lookup draft is q = one-hot(x): the native op accepts it with probability p(x) and otherwise
    resamples from p without x, so the first emitted token is distributed as p (chi-square)."""
    assert native.has_op("verify_sampled"), f"the native extension did not load: {native.LOAD_ERROR}"
    vocab, n = 6, 40_000
    p = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.20, 0.10], device=device)
    draft = torch.full((n, 1), 1, dtype=torch.int64, device=device)        # every row drafts token 1
    q = torch.zeros(n, 1, vocab, device=device)
    q[:, 0, 1] = 1.0
    target = p.expand(n, 2, vocab).contiguous()
    lens = torch.ones(n, dtype=torch.int32, device=device)
    accepted, out = torch.ops.dspark.verify_sampled(draft, q, target, lens, torch.zeros(n, dtype=torch.bool, device=device),
                                                    3, 0)
    first = out[:, 0].cpu()
    assert abs(float(accepted.float().mean()) - 0.30) < 0.01              # acceptance = p(x)
    counts = torch.bincount(first, minlength=vocab).double()
    expected = p.cpu().double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 20.5, f"chi-square {chi2:.1f} over 5 dof (p < 0.001 bound): {counts.tolist()}"
