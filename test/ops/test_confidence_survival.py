"""confidence_survival: native vs reference parity and hand-worked values."""
from __future__ import annotations

import math

import pytest
import torch
from torch.library import opcheck

from dspark_sglang.ops import native
from dspark_sglang.ops.reference import confidence_survival_ref
from test.conftest import DEVICES, TOL


def _native(*args):
    return torch.ops.dspark.confidence_survival(*args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_reqs", [1, 7, 99, 257])
@pytest.mark.parametrize("gamma", [1, 4, 7, 16])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.8, 1.0])
def test_matches_reference(device, num_reqs, gamma, threshold):
    assert native.has_kernel("confidence_survival", device)
    logits = (torch.randn(num_reqs, gamma) * 3).to(device)
    temps = (torch.rand(gamma) * 2 + 0.25).to(device)
    surv, lens = _native(logits, temps, threshold)
    surv_ref, lens_ref = confidence_survival_ref(logits, temps, threshold)
    torch.testing.assert_close(surv, surv_ref, rtol=0, atol=TOL[torch.float32])
    torch.testing.assert_close(lens, lens_ref, rtol=0, atol=0)
    if num_reqs == 7 and gamma == 4:
        opcheck(torch.ops.dspark.confidence_survival.default, (logits, temps, threshold))


@pytest.mark.parametrize("device", DEVICES)
def test_hand_worked_example(device):
    """logits [0, ln 3, −ln 3] with T = [1, 1, 1]: c = [1/2, 3/4, 1/4], a = [1/2, 3/8, 3/32].
    Threshold 0.4: c_3 = 1/4 < 0.4 -> length 2. T = [1, 1, 0.5] sharpens slot 3:
    c_3 = σ(−2 ln 3) = 1/10, a_3 = 3/8 · 1/10 = 0.0375."""
    logits = torch.tensor([[0.0, math.log(3), -math.log(3)]], device=device)
    surv, lens = _native(logits, torch.ones(3, device=device), 0.4)
    torch.testing.assert_close(surv.cpu(), torch.tensor([[0.5, 0.375, 0.09375]]), rtol=0, atol=1e-6)
    assert lens.tolist() == [2]
    surv, lens = _native(logits, torch.tensor([1.0, 1.0, 0.5], device=device), 0.6)
    torch.testing.assert_close(surv.cpu(), torch.tensor([[0.5, 0.375, 0.0375]]), rtol=0, atol=1e-6)
    assert lens.tolist() == [0]           # c_1 = 1/2 < 0.6: nothing passes the static threshold


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    logits = torch.randn(8, 5).to(device).t()          # [5, 8] view
    temps = torch.rand(16).add(0.5).to(device)[::2]
    surv, lens = _native(logits, temps, 0.5)
    surv_ref, lens_ref = confidence_survival_ref(logits.contiguous(), temps.contiguous(), 0.5)
    torch.testing.assert_close(surv, surv_ref, rtol=0, atol=TOL[torch.float32])
    assert torch.equal(lens, lens_ref)
