"""The counter-based random numbers shared by every face of `verify_sampled`.

All randomness of stochastic verification is a pure function of (seed, offset, row, position, index),
so the C++ CPU kernel, the CUDA kernel and the torch reference draw *the same* numbers and their
outputs can be compared exactly. The mixer is a 32-bit integer hash (Wellons' "lowbias32"), which is a
bijection on 32-bit words with good avalanche; `csrc/counter_rng.h` is its C++ twin.

    base            = mix(mix(mix(mix(seed_lo) ^ seed_hi) ^ offset_lo) ^ offset_hi)
    row_key(r)      = mix(base ^ r)
    pos_key(r,k,s)  = mix(row_key(r) ^ (2k + s))        s = 0: acceptance coin, s = 1: token draw
    coin(r,k)       = (mix(pos_key(r,k,0)) + 0.5) / 2^32                      in (0, 1)
    expo(r,k,i)     = -log((mix(pos_key(r,k,1) ^ i) + 0.5) / 2^32)            Exp(1), one per token i

Torch has no unsigned 32-bit arithmetic, so values live in int64 tensors in [0, 2^32) and the products
are split so that no intermediate leaves int64's range.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_M1 = 0x21F0AAAD
_M2 = 0x735A2D97
INV_2_32 = 1.0 / 4294967296.0


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for x in [0, 2^32) without int64 overflow."""
    low = x * (c & 0xFFFF)
    high = ((x * (c >> 16)) & 0xFFFF) << 16
    return (low + high) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 hash of int64 tensors holding 32-bit words."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 15)


def _mix_int(x: int) -> int:
    return int(mix32(torch.tensor([x & MASK32], dtype=torch.int64))[0])


def base_key(seed: int, offset: int) -> int:
    """The per-call key from a 64-bit seed and a 64-bit offset (both non-negative)."""
    h = _mix_int(seed & MASK32)
    h = _mix_int(h ^ ((seed >> 32) & MASK32))
    h = _mix_int(h ^ (offset & MASK32))
    return _mix_int(h ^ ((offset >> 32) & MASK32))


def pos_keys(base: int, rows: torch.Tensor, positions: torch.Tensor, stream: int) -> torch.Tensor:
    """pos_key for int64 tensors `rows` and `positions` of the same shape."""
    row_key = mix32(torch.as_tensor(base, dtype=torch.int64) ^ rows)
    return mix32(row_key ^ (2 * positions + stream))


def uniform_from_hash(h: torch.Tensor) -> torch.Tensor:
    """Map 32-bit hashes to float64 uniforms in (0, 1)."""
    return (h.to(torch.float64) + 0.5) * INV_2_32


def coins(base: int, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Acceptance coins u(r, k) in (0, 1), float64."""
    return uniform_from_hash(mix32(pos_keys(base, rows, positions, 0)))


def exponentials(base: int, rows: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Exp(1) draws, one per token: [*rows.shape, vocab_size] float64."""
    keys = pos_keys(base, rows, positions, 1).unsqueeze(-1)
    token = torch.arange(vocab_size, dtype=torch.int64, device=rows.device)
    return -torch.log(uniform_from_hash(mix32(keys ^ token)))
