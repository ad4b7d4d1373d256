"""verify_greedy: native (C++/CUDA) vs reference parity and hand-written edge cases."""
from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from dspark_sglang.ops import native
from dspark_sglang.ops.reference import verify_greedy_ref
from test.conftest import DEVICES
from test.ops.op_inputs import verify_lens


def _native(*args):
    return torch.ops.dspark.verify_greedy(*args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_reqs", [1, 7, 99, 257])
@pytest.mark.parametrize("gamma", [1, 4, 7, 16])
def test_matches_reference(device, num_reqs, gamma):
    assert native.has_kernel("verify_greedy", device)    # never compare ref with ref
    # Small token range so that matches (and long accepted runs) are common.
    draft = torch.randint(0, 2, (num_reqs, gamma)).to(device)
    target = torch.randint(0, 2, (num_reqs, gamma + 1)).to(device)
    target[: num_reqs // 2, :gamma] = draft[: num_reqs // 2]     # half the rows accept everything
    lens = verify_lens(num_reqs, gamma, device)
    acc, out = _native(draft, target, lens)
    acc_ref, out_ref = verify_greedy_ref(draft, target, lens)
    torch.testing.assert_close(acc, acc_ref, rtol=0, atol=0)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    if num_reqs == 7:
        opcheck(torch.ops.dspark.verify_greedy.default, (draft, target, lens))


@pytest.mark.parametrize("device", DEVICES)
def test_hand_written_cases(device):
    i32 = dict(dtype=torch.int32, device=device)
    draft = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7], [5, 6, 7], [1, 2, 3]], device=device)
    target = torch.tensor([[5, 6, 7, 8],     # all accepted -> bonus 8
                           [9, 6, 7, 8],     # first rejected -> correction 9
                           [5, 6, 7, 8],     # verify_len 0 -> only the target token at 0
                           [5, 6, 0, 8],     # mismatch at 2 but verify_len 2 -> bonus at 2
                           [1, 2, 3, 4]],    # padded row: verify_len 1
                          device=device)
    lens = torch.tensor([3, 3, 0, 2, 1], **i32)
    acc, out = _native(draft, target, lens)
    assert acc.tolist() == [3, 0, 0, 2, 1]
    assert out.tolist() == [[5, 6, 7, 8], [9, -1, -1, -1], [5, -1, -1, -1], [5, 6, 0, -1], [1, 2, -1, -1]]


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    draft_t = torch.randint(0, 2, (4, 9)).to(device).t()                 # [9, 4] view, non-contiguous
    target = torch.randint(0, 2, (9, 10)).to(device)[:, ::2]            # [9, 5] strided
    lens = torch.randint(0, 5, (18,), dtype=torch.int32).to(device)[::2]
    assert not draft_t.is_contiguous() and not target.is_contiguous() and not lens.is_contiguous()
    acc, out = _native(draft_t, target, lens)
    acc_ref, out_ref = verify_greedy_ref(draft_t.contiguous(), target.contiguous(), lens.contiguous())
    assert torch.equal(acc, acc_ref) and torch.equal(out, out_ref)


def test_empty_batch():
    acc, out = _native(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 5, dtype=torch.long),
                       torch.zeros(0, dtype=torch.int32))
    assert acc.shape == (0,) and out.shape == (0, 5)
