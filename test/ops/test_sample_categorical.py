"""sample_categorical: native vs reference parity, edge rows, input errors, and the drawn distribution."""
from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from dspark_sglang import ops
from dspark_sglang.ops import native
from dspark_sglang.ops.reference import sample_categorical_ref
from test.conftest import DEVICES

f64 = torch.float64


def _native(probs, uniforms):
    return torch.ops.dspark.sample_categorical(probs, uniforms)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("vocab", [1, 3, 255, 256, 257, 4099, 49152])
def test_matches_reference(device, vocab):
    assert native.has_kernel("sample_categorical", device)
    gen = torch.Generator().manual_seed(vocab)
    probs = (torch.randn(97, vocab, generator=gen) * 3).softmax(-1)
    probs[:, 1::3] = 0.0                                              # zero-probability tokens
    probs[5] *= 7.0                                                   # rows need not sum to 1
    uniforms = torch.rand(97, dtype=f64, generator=gen)
    ids = _native(probs.to(device), uniforms.to(device)).cpu()
    assert torch.equal(ids, sample_categorical_ref(probs, uniforms))
    if vocab == 257:
        opcheck(torch.ops.dspark.sample_categorical.default, (probs.to(device), uniforms.to(device)))


@pytest.mark.parametrize("device", DEVICES)
def test_edge_rows(device):
    """u = 0 takes the first token of positive probability; u just below 1 the last one (never a trailing
    zero); rows of zeros, NaN or inf mass give -1."""
    nan, inf = float("nan"), float("inf")
    probs = torch.tensor([[0.0, 0.3, 0.7, 0.0], [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0],
                          [0.2, nan, 0.3, 0.5], [0.2, inf, 0.3, 0.5], [0.0, 0.0, 0.0, 2.0]], device=device)
    uniforms = torch.tensor([0.0, 1.0 - 2.0 ** -53, 0.5, 0.5, 0.5, 0.999], dtype=f64, device=device)
    assert _native(probs, uniforms).tolist() == [1, 1, -1, -1, -1, 3]
    assert sample_categorical_ref(probs, uniforms).tolist() == [1, 1, -1, -1, -1, 3]


@pytest.mark.parametrize("device", DEVICES)
def test_block_boundaries(device):
    """Thresholds placed exactly at block boundaries of the native faces' two-pass walk (256 entries per
    CPU block; ⌈4099 / 256⌉ = 17 per CUDA chunk): all-ones rows, u = (k + ½) / V, so u·total = k + ½ and
    the first c_i = i + 1 above it is i = k."""
    vocab = 4099
    probs = torch.ones(8, vocab, device=device)
    ks = torch.tensor([0, 16, 17, 255, 256, 257, 512, 4098])
    uniforms = ((ks.to(f64) + 0.5) / vocab).to(device)
    assert _native(probs, uniforms).cpu().tolist() == ks.tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_distribution(device):
    """200k draws from p = [.5, .25, .125, .0625, 0, .0625]: each frequency within 5 standard errors, and
    the zero-probability token never drawn."""
    n = 200_000
    p = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0, 0.0625])
    gen = torch.Generator().manual_seed(7)
    uniforms = torch.rand(n, dtype=f64, generator=gen)
    ids = _native(p.expand(n, -1).contiguous().to(device), uniforms.to(device)).cpu()
    freq = torch.bincount(ids, minlength=6).double() / n
    stderr = (p.double() * (1 - p.double()) / n).sqrt()
    assert freq[4] == 0.0
    assert ((freq - p.double()).abs() <= 5 * stderr + 1e-12).all(), (freq, p)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(300, 6, generator=gen).to(device).t()              # [6, 300] view
    uniforms = torch.rand(12, dtype=f64, generator=gen).to(device)[::2]
    assert torch.equal(_native(probs, uniforms).cpu(), sample_categorical_ref(probs.cpu(), uniforms.cpu()))


@pytest.mark.parametrize("override, message", [
    (dict(probs=torch.ones(2, 3, dtype=f64)), "probs must have dtype Float"),
    (dict(uniforms=torch.zeros(2)), "uniforms must have dtype Double"),
    (dict(probs=torch.ones(6)), "probs must be 2-D"),
    (dict(uniforms=torch.zeros(3, dtype=f64)), r"uniforms.size\(0\) must be 2 \(one uniform per row of probs\)"),
    (dict(probs=torch.ones(2, 0)), "at least one column"),
])
def test_errors_name_the_input(override, message):
    args = dict(probs=torch.ones(2, 3), uniforms=torch.zeros(2, dtype=f64))
    args.update(override)
    with pytest.raises(RuntimeError, match=message):
        ops.sample_categorical(**args)
