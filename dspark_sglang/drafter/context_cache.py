"""`DraftContextCache`: per-layer injected K/V of committed tokens, per request, appended incrementally.

The context K/V of a committed token depends only on that token's target features and absolute
position (DSpark §3: k_proj/v_proj of the projected features, k_norm, RoPE), so it is computed
exactly once, when the token is committed, and never recomputed. Requests have ragged lengths: the
buffers are padded to a shared capacity and padding entries carry position `PAD_POSITION`, which no
anchor position exceeds, so the "position < anchor position" visibility mask also hides padding.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

PAD_POSITION = torch.iinfo(torch.int64).max
"""Position stored in unused cache entries; never visible (no anchor position is larger)."""

KVProjector = Callable[[torch.Tensor, torch.Tensor], Sequence[tuple[torch.Tensor, torch.Tensor]]]
"""(target_hidden [T, n·H], positions [T]) -> per layer (k, v), each [Hkv, T, D]."""


class DraftContextCache:
    """Injected context K/V for `batch_size` request slots.

    Usually built by `DSparkDrafter.new_cache(batch_size)`, which supplies the projector.

    Example:
        >>> cache = drafter.new_cache(2)  # doctest: +SKIP
        >>> cache.append(0, target_hidden, torch.arange(5))   # request 0: tokens at positions 0..4  # doctest: +SKIP
        >>> cache.lengths  # doctest: +SKIP
        [5, 0]
    """

    def __init__(self, batch_size: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str, project: KVProjector | None = None,
                 initial_capacity: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = batch_size
        self.num_layers = num_layers
        self._project = project
        self.capacity = max(1, initial_capacity)
        shape = (batch_size, num_kv_heads, self.capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]    # [B, Hkv, cap, D]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]  # [B, Hkv, cap, D]
        self.positions = torch.full((batch_size, self.capacity), PAD_POSITION, dtype=torch.int64,
                                    device=device)                                                  # [B, cap]
        self.lengths = [0] * batch_size
        """Host-side number of cached tokens per request (no device sync needed to read it)."""
        self.active = [True] * batch_size
        """False for slots released with `drop`."""

    # ------------------------------------------------------------------ writing
    def append(self, req: int, target_hidden: torch.Tensor, positions: torch.Tensor) -> None:
        """Project and cache T newly committed tokens of request `req`.

        Args:
            req:           slot index in [0, batch_size).
            target_hidden: [T, n·H] concatenated target features of the committed tokens.
            positions:     [T] int64 absolute positions of those tokens.
        """
        if self._project is None:
            raise RuntimeError("this DraftContextCache has no projector; use DSparkDrafter.new_cache or append_kv")
        if target_hidden.dim() != 2 or positions.shape != (target_hidden.shape[0],):
            raise ValueError(f"target_hidden must be [T, n*H] and positions [T]; got "
                             f"{tuple(target_hidden.shape)} and {tuple(positions.shape)}")
        self.append_kv(req, self._project(target_hidden, positions), positions)

    def append_kv(self, req: int, kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
                  positions: torch.Tensor) -> None:
        """Cache already-projected K/V: per layer (k, v) each [Hkv, T, D]; positions [T] int64."""
        if not 0 <= req < self.batch_size:
            raise IndexError(f"req must be in [0, {self.batch_size}); got {req}")
        if len(kv) != self.num_layers:
            raise ValueError(f"expected K/V for {self.num_layers} layers; got {len(kv)}")
        num_new = positions.shape[0]
        start, end = self.lengths[req], self.lengths[req] + num_new
        self._reserve(end)
        for layer, (k, v) in enumerate(kv):
            self.keys[layer][req, :, start:end] = k
            self.values[layer][req, :, start:end] = v
        self.positions[req, start:end] = positions.to(self.positions.device, torch.int64)
        self.lengths[req] = end
        self.active[req] = True

    def _reserve(self, needed: int) -> None:
        """Grow every buffer (doubling) to hold `needed` entries per slot; old entries are copied."""
        if needed <= self.capacity:
            return
        new_cap = self.capacity
        while new_cap < needed:
            new_cap *= 2
        pad = new_cap - self.capacity
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                extra = buf.new_zeros(*buf.shape[:2], pad, buf.shape[3])                          # [B, Hkv, pad, D]
                buffers[i] = torch.cat([buf, extra], dim=2)
        extra_pos = self.positions.new_full((self.batch_size, pad), PAD_POSITION)                 # [B, pad]
        self.positions = torch.cat([self.positions, extra_pos], dim=1)
        self.capacity = new_cap

    # ------------------------------------------------------------------ lifecycle
    def truncate(self, req: int, length: int) -> None:
        """Keep only the first `length` cached tokens of `req` (e.g. roll back uncommitted tokens)."""
        if not 0 <= length <= self.lengths[req]:
            raise ValueError(f"length must be in [0, {self.lengths[req]}] for request {req}; got {length}")
        self.positions[req, length:] = PAD_POSITION
        self.lengths[req] = length

    def reset(self, req: int) -> None:
        """Empty slot `req` so that a new request can start in it."""
        self.truncate(req, 0)
        self.active[req] = True

    def drop(self, req: int) -> None:
        """Release slot `req` (its request finished); it stays empty until the next `append`/`reset`."""
        self.truncate(req, 0)
        self.active[req] = False

    # ------------------------------------------------------------------ reading
    @property
    def max_len(self) -> int:
        """Longest cached context over all slots (host int)."""
        return max(self.lengths)

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) of `layer`, each [B, Hkv, L, D] with L = max_len (shorter slots padded)."""
        length = self.max_len
        return self.keys[layer][:, :, :length], self.values[layer][:, :, :length]

    def visible_mask(self, anchor_positions: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: entry is a cached token at a position < its request's anchor position."""
        return self.positions[:, :self.max_len] < anchor_positions.unsqueeze(1)
