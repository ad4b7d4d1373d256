"""verify_sampled: exact native-vs-reference parity (shared counter RNG), determinism, and the
distribution check that speculative sampling keeps the target distribution."""
from __future__ import annotations

import pytest
import torch
from scipy import stats
from torch.library import opcheck

from dspark_sglang import ops
from dspark_sglang.ops import native
from dspark_sglang.ops.reference import verify_sampled_ref
from test.conftest import DEVICES
from test.ops.op_inputs import chain_probs, verify_lens


def _native(*args):
    return torch.ops.dspark.verify_sampled(*args)


def _check_parity(device, num_reqs, gamma, vocab, dtype=torch.float32, seed=1234, offset=7):
    assert native.has_kernel("verify_sampled", device)   # never compare ref with ref
    gen = torch.Generator().manual_seed(num_reqs * 1000 + gamma * 10 + vocab)
    draft, q, p = chain_probs(num_reqs, gamma, vocab, dtype=dtype, device=device, generator=gen)
    lens = verify_lens(num_reqs, gamma, device, generator=gen)
    greedy = (torch.rand(num_reqs, generator=gen) < 0.3).to(device)
    acc, out = _native(draft, q, p, lens, greedy, seed, offset)
    acc_ref, out_ref = verify_sampled_ref(draft, q, p, lens, greedy, seed, offset)
    torch.testing.assert_close(acc, acc_ref, rtol=0, atol=0)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    # The run exercised both outcomes: some drafts rejected, some accepted (for non-trivial sizes).
    if num_reqs * gamma >= 28:
        sampled_rows = ~greedy & (lens > 0)
        assert (acc[sampled_rows] < lens[sampled_rows]).any() and (acc > 0).any()
    return draft, q, p, lens, greedy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_reqs", [1, 7, 99, 257])
@pytest.mark.parametrize("gamma", [1, 4, 7, 16])
@pytest.mark.parametrize("vocab", [37, 49152])
def test_matches_reference(device, num_reqs, gamma, vocab):
    args = _check_parity(device, num_reqs, gamma, vocab)
    if num_reqs == 7 and vocab == 37:
        opcheck(torch.ops.dspark.verify_sampled.default, (*args, 3, 4))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_qwen_vocab(device):
    _check_parity(device, 64, 7, 151936)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_reference_half_precision(device, dtype):
    _check_parity(device, 33, 5, 1000, dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_hand_written_cases(device):
    V = 4
    p = torch.zeros(4, 3, V, device=device)
    q = torch.zeros(4, 2, V, device=device)
    # row 0: q == p everywhere -> every draft accepted, bonus drawn from p[2] = one-hot(3)
    p[0, :, 1] = 1.0; p[0, 2] = torch.tensor([0.0, 0.0, 0.0, 1.0]); q[0, :, 1] = 1.0
    # row 1: first draft has p(x) = 0 -> rejected at 0; residual max(0, p - q) = one-hot(2)
    p[1, 0] = torch.tensor([0.0, 0.0, 1.0, 0.0]); q[1, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # row 2: verify_len 0 -> only the bonus from p[0] = one-hot(3)
    p[2, 0, 3] = 1.0; q[2, :, 0] = 1.0
    # row 3: greedy row: argmax p = [1, 2, 0]; drafts [1, 0] -> accept 1, correct to 2
    p[3] = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]])
    q[3, :, 0] = 1.0
    draft = torch.tensor([[1, 1], [0, 0], [0, 0], [1, 0]], device=device)
    lens = torch.tensor([2, 2, 0, 2], dtype=torch.int32, device=device)
    greedy = torch.tensor([False, False, False, True], device=device)
    acc, out = _native(draft, q, p, lens, greedy, 0, 0)
    assert acc.tolist() == [2, 0, 0, 1]
    assert out.tolist() == [[1, 1, 3], [2, -1, -1], [3, -1, -1], [1, 2, -1]]


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    draft, q, p = chain_probs(6, 4, 50, device=device)
    lens = verify_lens(6, 4, device)
    greedy = torch.tensor([True, False] * 3, device=device)
    q_nc = q.transpose(0, 1).contiguous().transpose(0, 1)          # same values, permuted strides
    p_nc = torch.cat([p, p], -1)[..., :50]                          # sliced last dim
    draft_nc = draft.t().contiguous().t()
    assert not (q_nc.is_contiguous() or p_nc.is_contiguous() or draft_nc.is_contiguous())
    got = _native(draft_nc, q_nc, p_nc, lens, greedy, 9, 1)
    want = verify_sampled_ref(draft, q, p, lens, greedy, 9, 1)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_runs_are_deterministic(device):
    draft, q, p = chain_probs(64, 7, 300, device=device)
    lens = torch.full((64,), 7, dtype=torch.int32, device=device)
    greedy = torch.zeros(64, dtype=torch.bool, device=device)
    first = ops.verify_sampled(draft, q, p, lens, greedy, seed=11, offset=5)
    again = ops.verify_sampled(draft, q, p, lens, greedy, seed=11, offset=5)
    other = ops.verify_sampled(draft, q, p, lens, greedy, seed=11, offset=6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])
    torch.manual_seed(3)
    from_gen_a = ops.verify_sampled(draft, q, p, lens, greedy)
    torch.manual_seed(3)
    from_gen_b = ops.verify_sampled(draft, q, p, lens, greedy)
    assert all(torch.equal(a, b) for a, b in zip(from_gen_a, from_gen_b))


# Adversarial draft distributions over a 5-token vocabulary: q over-weights tokens the target
# finds unlikely (or impossible), under-weights others, and one slot has q == p.
_P = torch.tensor([[0.50, 0.30, 0.20, 0.00, 0.00],
                   [0.05, 0.05, 0.10, 0.40, 0.40],
                   [0.20, 0.20, 0.20, 0.20, 0.20],
                   [0.90, 0.04, 0.03, 0.02, 0.01]])
_Q = torch.tensor([[0.05, 0.05, 0.10, 0.40, 0.40],
                   [0.50, 0.30, 0.20, 0.00, 0.00],
                   [0.20, 0.20, 0.20, 0.20, 0.20]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ragged", [False, True])
def test_emitted_tokens_follow_target_distribution(device, ragged):
    """Chi-square per position over 10^6 independent rows: whether a token at position k is an
    accepted draft, a residual resample or the bonus, it is distributed as p_k."""
    num_rows, gamma, vocab = 1_000_000, 3, 5
    gen = torch.Generator().manual_seed(2024)
    q = _Q.expand(num_rows, gamma, vocab).contiguous()
    p = _P.expand(num_rows, gamma + 1, vocab).contiguous()
    draft = torch.multinomial(_Q, num_rows, replacement=True, generator=gen).t().contiguous()  # x_k ~ q_k
    lens = (torch.randint(0, gamma + 1, (num_rows,), generator=gen, dtype=torch.int32) if ragged
            else torch.full((num_rows,), gamma, dtype=torch.int32))
    greedy = torch.zeros(num_rows, dtype=torch.bool)
    acc, out = ops.verify_sampled(draft.to(device), q.to(device), p.to(device), lens.to(device),
                                  greedy.to(device), seed=77, offset=0)
    out = out.cpu()
    for k in range(gamma + 1):
        tokens = out[:, k][out[:, k] >= 0]
        counts = torch.bincount(tokens, minlength=vocab).double()
        assert counts.sum() > 10_000, f"position {k} emitted too few tokens to test"
        support = _P[k] > 0
        assert counts[~support].sum() == 0, f"position {k} emitted a token with p = 0"
        probs = _P[k][support].double()
        expected = probs / probs.sum() * counts.sum()
        pvalue = stats.chisquare(counts[support].numpy(), expected.numpy()).pvalue
        assert pvalue > 0.01, f"position {k}: counts {counts.tolist()} vs p {(_P[k]).tolist()} (p-value {pvalue:.2e})"
    # Acceptance at slot 0 happens with probability Σ min(p, q) (ragged rows: only where verified).
    verified = lens > 0
    rate = (acc.cpu()[verified] > 0).double().mean().item()
    assert abs(rate - torch.minimum(_P[0], _Q[0]).sum().item()) < 0.01
