"""logits_to_probs / sample_tokens: per-request temperature, top-k, top-p, checked by hand."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from dspark_sglang.sampling import (SamplingBatch, greedy_ids, logits_to_probs, logits_to_probs_full_sort, ragged_probs,
                                    sample_from_probs, sample_tokens)


def _probs(*values: float) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float32)
    return t / t.sum()


def test_temperature_only():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    out = logits_to_probs(logits, SamplingBatch.from_lists([2.0]))
    torch.testing.assert_close(out, torch.softmax(logits / 2.0, -1))


def test_top_k_by_hand():
    """logits [1, 5, 3, 5, 2], k=3 keeps {5, 5, 3}: probs e^5, e^5, e^3 normalised, others exactly 0."""
    logits = torch.tensor([[1.0, 5.0, 3.0, 5.0, 2.0]])
    out = logits_to_probs(logits, SamplingBatch.from_lists([1.0], top_k=[3]))
    z = 2 * math.exp(5) + math.exp(3)
    expected = torch.tensor([[0.0, math.exp(5) / z, math.exp(3) / z, math.exp(5) / z, 0.0]])
    torch.testing.assert_close(out, expected)
    assert (out[0, [0, 4]] == 0).all()


def test_top_k_keeps_ties_at_threshold():
    """k=2 on [3, 1, 3, 3]: the 2nd largest is 3, every 3 survives (order-independent)."""
    out = logits_to_probs(torch.tensor([[3.0, 1.0, 3.0, 3.0]]), SamplingBatch.from_lists([1.0], top_k=[2]))
    torch.testing.assert_close(out, torch.tensor([[1 / 3, 0.0, 1 / 3, 1 / 3]]))


@pytest.mark.parametrize("top_p, expected", [
    (0.4, [1.0, 0, 0, 0]),                     # 0.5 alone already reaches 0.4
    (0.7, [0.625, 0.375, 0, 0]),               # mass before 0.3 is 0.5 < 0.7 -> keep; before 0.15 is 0.8
    (0.85, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),
    (1.0, [0.5, 0.3, 0.15, 0.05]),
])
def test_top_p_by_hand(top_p, expected):
    """probs [0.5, 0.3, 0.15, 0.05] (shuffled in the vocab): keep the smallest prefix reaching top_p."""
    perm = torch.tensor([2, 0, 3, 1])
    logits = _probs(0.5, 0.3, 0.15, 0.05).log()[perm].unsqueeze(0)
    out = logits_to_probs(logits, SamplingBatch.from_lists([1.0], top_p=[top_p]))
    torch.testing.assert_close(out, torch.tensor([expected])[:, perm])


def test_top_k_then_top_p():
    """[0.4, 0.3, 0.2, 0.1], k=2 -> [4/7, 3/7]; then top-p 0.5 keeps only 4/7 -> one-hot."""
    logits = _probs(0.4, 0.3, 0.2, 0.1).log().unsqueeze(0)
    out = logits_to_probs(logits, SamplingBatch.from_lists([1.0], top_k=[2], top_p=[0.5]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    out = logits_to_probs(logits, SamplingBatch.from_lists([1.0], top_k=[3], top_p=[1.0]))
    torch.testing.assert_close(out, torch.tensor([[4 / 9, 3 / 9, 2 / 9, 0.0]]))


def test_per_row_params_in_one_batch_and_middle_dims():
    """Each row uses its own params; [R, S, V] logits use row r's params for all S positions."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 10, generator=gen)
    temps, ks, ps = [0.0, 0.5, 1.0, 1.3], [0, 3, 0, 5], [1.0, 1.0, 0.6, 0.9]
    batch = logits_to_probs(logits, SamplingBatch.from_lists(temps, top_k=ks, top_p=ps))
    for r in range(4):
        alone = logits_to_probs(logits[r:r + 1], SamplingBatch.from_lists([temps[r]], [ks[r]], [ps[r]]))
        torch.testing.assert_close(batch[r:r + 1], alone, rtol=0, atol=0)
    # row 1: T=0.5, k=3 by hand
    top3 = logits[1].topk(3, dim=-1)
    manual = torch.zeros(3, 10).scatter(-1, top3.indices, torch.softmax(top3.values / 0.5, -1))
    torch.testing.assert_close(batch[1], manual)
    assert ((batch[1] > 0).sum(-1) == 3).all() and ((batch[3] > 0).sum(-1) <= 5).all()
    torch.testing.assert_close(batch.sum(-1), torch.ones(4, 3))


def test_greedy_rows_keep_argmax_and_sample_tokens_takes_it():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 50, generator=gen)
    sampling = SamplingBatch.from_lists([0.0, 0.0, 1.0], top_k=[5, 0, 0], top_p=[0.3, 1.0, 1.0])
    probs = logits_to_probs(logits, sampling)
    assert torch.equal(greedy_ids(probs[:2]), logits[:2].argmax(-1))
    for seed in range(5):
        ids = sample_tokens(probs, sampling, torch.Generator().manual_seed(seed))
        assert torch.equal(ids[:2], logits[:2].argmax(-1))


def test_masked_logits_stay_zero():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]])
    out = logits_to_probs(logits, SamplingBatch.from_lists([0.7], top_k=[3], top_p=[0.99]))
    assert out[0, 1] == 0 and out[0, 3] == 0
    torch.testing.assert_close(out.sum(-1), torch.ones(1))


def test_sample_from_probs_distribution_and_determinism():
    probs = _probs(0.05, 0.4, 0.25, 0.2, 0.1)
    n = 20000
    ids = sample_from_probs(probs.expand(n, 5), torch.Generator().manual_seed(3))
    counts = torch.bincount(ids, minlength=5).double()
    assert chisquare(counts.numpy(), (probs.double() * n).numpy()).pvalue > 1e-3
    uniform = torch.full((5,), n / 5, dtype=torch.float64)
    assert chisquare(counts.numpy(), uniform.numpy()).pvalue < 1e-6      # the test can tell distributions apart
    again = sample_from_probs(probs.expand(n, 5), torch.Generator().manual_seed(3))
    assert torch.equal(ids, again)


def test_sample_from_probs_shapes_zero_mass_and_bad_rows():
    """[R, S, V] in, [R, S] out; zero-probability tokens are never drawn; a row without mass is an error."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [1.0, 0.0, 0.0, 0.0]]).expand(1000, 2, 4)
    ids = sample_from_probs(probs, torch.Generator().manual_seed(0))
    assert ids.shape == (1000, 2)
    assert set(ids[:, 0].tolist()) == {1, 3} and set(ids[:, 1].tolist()) == {0}
    with pytest.raises(ValueError, match="row 1 has no positive finite probability mass"):
        sample_from_probs(torch.tensor([[0.5, 0.5], [0.0, 0.0]]))


def test_sampling_batch_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingBatch.from_lists([-0.1])
    with pytest.raises(ValueError, match="top_p"):
        SamplingBatch.from_lists([1.0], top_p=[0.0])
    with pytest.raises(ValueError, match="rows"):
        logits_to_probs(torch.zeros(2, 4), SamplingBatch.greedy(3))
    assert SamplingBatch.from_lists([0.0, 0.5]).is_greedy.tolist() == [True, False]


def test_unfiltered_fast_path_equals_full_filter_path():
    """No active top-k/top-p skips the sort; the result must equal the sorting path when its filters
    keep every token (top_p just below 1 forces that path but cuts nothing here)."""
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 50)
    temps = [0.0, 0.7, 1.0, 1.3]
    fast = logits_to_probs(logits, SamplingBatch.from_lists(temps))
    full = logits_to_probs(logits, SamplingBatch.from_lists(temps, top_p=[1.0 - 1e-9] * 4))
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-6)


def test_all_greedy_sample_tokens_is_argmax_without_drawing():
    probs = torch.softmax(torch.randn(3, 20), -1)
    gen = torch.Generator().manual_seed(1)
    state = gen.get_state()
    ids = sample_tokens(probs, SamplingBatch.greedy(3), gen)
    assert torch.equal(ids, probs.argmax(-1))
    assert torch.equal(gen.get_state(), state)          # no random numbers consumed


def test_select_takes_requests_in_order():
    s = SamplingBatch.from_lists([0.0, 0.7, 1.0], top_k=[0, 20, 5], top_p=[1.0, 0.8, 0.9])
    sub = s.select(torch.tensor([2, 0]))
    assert sub.temperature.tolist() == pytest.approx([1.0, 0.0]) and sub.top_k.tolist() == [5, 0]
    assert sub.top_p.tolist() == pytest.approx([0.9, 1.0])


def test_ragged_probs_equal_padded_processing():
    """Normalising only the Σ rows gives the rows the padded [R, W, V] processing gives, zeros elsewhere."""
    gen = torch.Generator().manual_seed(11)
    rows, width, vocab = [1, 3, 8, 2], 8, 300
    sampling = SamplingBatch.from_lists([0.0, 0.7, 1.0, 1.3], top_k=[0, 20, 0, 5], top_p=[1.0, 0.9, 0.8, 1.0])
    flat = torch.randn(sum(rows), vocab, generator=gen) * 4                     # [Σ rows, V]
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(rows).unsqueeze(1)   # [R, W]
    padded = torch.zeros(len(rows), width, vocab)
    padded[mask] = flat
    expected = logits_to_probs(padded, sampling)
    out = ragged_probs(flat, mask, sampling)
    assert out.shape == (4, width, vocab) and out.dtype == torch.float32
    torch.testing.assert_close(out[mask], expected[mask], rtol=0, atol=1e-7)
    assert (out[~mask] == 0).all()


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])     # near-flat rows widen the candidates up to the full sort
def test_candidate_search_equals_full_sort(scale):
    """Mixed requests (greedy, top-k only, top-p only, both, ties, k > C) over a 5,000-token vocabulary:
    the same kept tokens and probabilities as sorting every row."""
    gen = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(7, 3, 5000, generator=gen) * scale
    logits[3, :, :40] = logits[3, :, :40].max()               # 40-way tie at the top of request 3
    logits[4] = logits[4].round()                              # many ties everywhere
    sampling = SamplingBatch.from_lists([0.0, 0.7, 1.0, 1.3, 0.9, 1.0, 0.8],
                                        top_k=[0, 20, 0, 5, 300, 0, 1000], top_p=[0.9, 1.0, 0.8, 0.95, 0.7, 0.99, 1.0])
    out = logits_to_probs(logits, sampling)
    expected = logits_to_probs_full_sort(logits, sampling)
    assert torch.equal(out > 0, expected > 0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-7)


def test_drop_below_is_bitwise_masking():
    """Lowering dropped logits by 1e30 gives the same softmax bits as masking them with -inf."""
    from dspark_sglang.sampling import _drop_below

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4000, generator=gen) * 5
    cutoff = x.quantile(torch.tensor([0.0, 0.5, 0.9, 0.99, 0.999, 1.0]), dim=1).diagonal().unsqueeze(1)   # [6, 1]
    masked = torch.where(x >= cutoff, x, torch.tensor(float("-inf"))).softmax(-1)
    assert torch.equal(_drop_below(x, cutoff).softmax(-1), masked)
    assert torch.equal(_drop_below(x, cutoff).logsumexp(-1), torch.where(x >= cutoff, x, -torch.inf).logsumexp(-1))
