"""sgl_kernel rmsnorm / fused_add_rmsnorm / silu_and_mul / rotary_embedding CPU ops (csrc/cpu/sgl_kernel/
elementwise_ops.cpp) against the float32 formulas of SGLang's native layers."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dspark_sglang._C  # noqa: F401  (registers the sgl_kernel CPU ops)
from dspark_sglang.serving.cpu_host import sgl_kernel_ops

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ROWS = [1, 8, 37, 300]     # 300: several parallel tasks at every hidden size tested


def _tol(dtype):
    return {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
            torch.float16: dict(rtol=2e-3, atol=2e-3)}[dtype]


def _rms_ref(x32, w, eps):
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * w.float()


def test_ops_are_registered_by_this_package():
    for op in ("rmsnorm_cpu", "fused_add_rmsnorm_cpu", "silu_and_mul_cpu", "rotary_embedding_cpu"):
        assert sgl_kernel_ops.is_ours(op), op


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", [576, 37])
def test_rmsnorm(dtype, rows, hidden):
    x = torch.randn(rows, hidden).to(dtype)
    w = (torch.rand(hidden) + 0.5).to(dtype)
    y = torch.ops.sgl_kernel.rmsnorm_cpu(x, w, 1e-5)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.float(), _rms_ref(x.float(), w, 1e-5), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("hidden", [576, 37])
def test_fused_add_rmsnorm_in_place(dtype, rows, hidden):
    x, r = torch.randn(rows, hidden).to(dtype), torch.randn(rows, hidden).to(dtype)
    w = (torch.rand(hidden) + 0.5).to(dtype)
    total = x.float() + r.float()
    x_in, r_in = x.clone(), r.clone()
    torch.ops.sgl_kernel.fused_add_rmsnorm_cpu(x_in, r_in, w, 1e-6)
    assert torch.equal(r_in, total.to(dtype))                              # residual = x + residual, rounded
    torch.testing.assert_close(x_in.float(), _rms_ref(total, w, 1e-6), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("d", [1536, 21])
def test_silu_and_mul(dtype, rows, d):
    x = (torch.randn(rows, 2 * d) * 4).to(dtype)
    x[0, :3] = torch.tensor([-100.0, 100.0, 0.0]).to(dtype)               # far tails: no overflow
    y = torch.ops.sgl_kernel.silu_and_mul_cpu(x)
    ref = F.silu(x[:, :d].float()) * x[:, d:].float()
    assert y.shape == (rows, d) and y.dtype == dtype
    torch.testing.assert_close(y.float(), ref, **_tol(dtype))


def _rope_ref(positions, x, head_size, cache, neox):
    tokens = positions.numel()
    x32 = x.float().reshape(tokens, -1, head_size)
    rot = cache.shape[1]
    cos, sin = cache.float()[positions].chunk(2, dim=-1)                   # [T, rot/2]
    cos, sin = cos[:, None], sin[:, None]
    xr, xp = x32[..., :rot], x32[..., rot:]
    if neox:
        x1, x2 = xr.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        x1, x2 = xr[..., ::2], xr[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((out, xp), dim=-1).reshape(x.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("rot_dim", [64, 32])
@pytest.mark.parametrize("tokens", [9, 200])          # 200: several parallel tasks
def test_rotary_embedding(dtype, neox, rot_dim, tokens):
    head_size = 64
    positions = torch.tensor([0, 5, 5, 17, 100, 3, 2, 1, 99] * (tokens // 9 + 1), dtype=torch.int64)[:tokens]
    q = torch.randn(tokens, 9 * head_size).to(dtype)
    k = torch.randn(tokens, 3 * head_size).to(dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2).float() / rot_dim))
    freqs = torch.outer(torch.arange(128).float(), inv)
    cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)                  # [128, rot_dim]
    q_in, k_in = q.clone(), k.clone()
    qo, ko = torch.ops.sgl_kernel.rotary_embedding_cpu(positions.int(), q_in, k_in, head_size, cache, neox)
    assert torch.equal(q_in, q) and torch.equal(k_in, k)                   # inputs untouched
    torch.testing.assert_close(qo.float(), _rope_ref(positions, q, head_size, cache, neox), **_tol(dtype))
    torch.testing.assert_close(ko.float(), _rope_ref(positions, k, head_size, cache, neox), **_tol(dtype))


def test_rows_are_independent():
    x = torch.randn(23, 576, dtype=torch.bfloat16)
    w = torch.rand(576, dtype=torch.bfloat16) + 0.5
    full = torch.ops.sgl_kernel.rmsnorm_cpu(x, w, 1e-5)
    assert torch.equal(torch.ops.sgl_kernel.rmsnorm_cpu(x[7:8].contiguous(), w, 1e-5)[0], full[7])
    g = torch.randn(23, 3072, dtype=torch.bfloat16)
    assert torch.equal(torch.ops.sgl_kernel.silu_and_mul_cpu(g[5:6].contiguous())[0],
                       torch.ops.sgl_kernel.silu_and_mul_cpu(g)[5])


def test_errors_name_the_argument():
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match=r"rmsnorm_cpu: weight must be \[hidden\] with hidden = input.size\(-1\) = 8"):
        torch.ops.sgl_kernel.rmsnorm_cpu(x, torch.ones(7), 1e-5)
    with pytest.raises(RuntimeError, match=r"fused_add_rmsnorm_cpu: residual must be a contiguous Float tensor"):
        torch.ops.sgl_kernel.fused_add_rmsnorm_cpu(x, torch.randn(2, 9), torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match=r"silu_and_mul_cpu: input's last dimension must be even"):
        torch.ops.sgl_kernel.silu_and_mul_cpu(torch.randn(2, 7))
    cache = torch.zeros(4, 8)
    with pytest.raises(RuntimeError, match=r"positions\[1\] = 4 is outside the cos_sin_cache's 4 positions"):
        torch.ops.sgl_kernel.rotary_embedding_cpu(torch.tensor([0, 4]), torch.randn(2, 16), torch.randn(2, 16), 8, cache, True)
    with pytest.raises(RuntimeError, match=r"input must be bfloat16, float16 or float32; got Int"):
        torch.ops.sgl_kernel.silu_and_mul_cpu(torch.ones(2, 4, dtype=torch.int32))
