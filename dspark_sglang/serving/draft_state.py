"""Per-request draft context (injected K/V of committed tokens), keyed by SGLang request id.

Each request owns a one-slot `DraftContextCache`, extended incrementally as tokens are committed
(prefill chunks, then x0 + accepted drafts after every verify) and freed when the request finishes.
`StackedContext` presents the caches of one step's requests to `DSparkDrafter.propose`, which runs
over every slot of the cache it is given.
"""
from __future__ import annotations

from typing import Hashable

import torch

from dspark_sglang.drafter import DraftContextCache, DSparkDrafter
from dspark_sglang.drafter.context_cache import PAD_POSITION


class StackedContext:
    """Read-only view of R one-slot caches with the interface `DSparkDrafter.block_hidden` reads."""

    def __init__(self, caches: list[DraftContextCache]) -> None:
        first = caches[0]
        self.batch_size = len(caches)
        self.max_len = max(c.lengths[0] for c in caches)
        length = self.max_len
        device = first.positions.device
        self.positions = torch.full((self.batch_size, length), PAD_POSITION, dtype=torch.int64, device=device)
        self._keys, self._values = [], []
        for layer in range(first.num_layers):
            k0 = first.keys[layer]
            keys = k0.new_zeros(self.batch_size, k0.shape[1], length, k0.shape[3])     # [R, Hkv, L, D]
            values = torch.zeros_like(keys)
            for r, cache in enumerate(caches):
                n = cache.lengths[0]
                keys[r, :, :n] = cache.keys[layer][0, :, :n]
                values[r, :, :n] = cache.values[layer][0, :, :n]
            self._keys.append(keys)
            self._values.append(values)
        for r, cache in enumerate(caches):
            n = cache.lengths[0]
            self.positions[r, :n] = cache.positions[0, :n]

    def layer_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._keys[layer], self._values[layer]

    def visible_mask(self, anchor_positions: torch.Tensor) -> torch.Tensor:
        return self.positions < anchor_positions.unsqueeze(1)


class DraftContexts:
    """rid -> one-slot DraftContextCache."""

    def __init__(self, drafter: DSparkDrafter) -> None:
        self.drafter = drafter
        self._caches: dict[Hashable, DraftContextCache] = {}

    def get(self, rid: Hashable) -> DraftContextCache:
        cache = self._caches.get(rid)
        if cache is None:
            cache = self._caches[rid] = self.drafter.new_cache(1)
        return cache

    def extend(self, rid: Hashable, target_hidden: torch.Tensor, start_pos: int) -> None:
        """Cache T committed tokens at positions start_pos.. (drops any cached entry at >= start_pos first,
        e.g. after a retraction re-prefills the request)."""
        cache = self.get(rid)
        n = cache.lengths[0]
        if n and int(cache.positions[0, n - 1]) >= start_pos:  # sync: rare rollback check on host
            keep = int((cache.positions[0, :n] < start_pos).sum())
            cache.truncate(0, keep)
        positions = torch.arange(start_pos, start_pos + target_hidden.shape[0], device=cache.positions.device)
        self.drafter.append_context(cache, 0, target_hidden, positions)

    def stacked(self, rids: list[Hashable]):
        caches = [self.get(rid) for rid in rids]
        return caches[0] if len(caches) == 1 else StackedContext(caches)

    def drop(self, rid: Hashable) -> None:
        self._caches.pop(rid, None)

    def __len__(self) -> int:
        return len(self._caches)

    def num_cached_tokens(self) -> int:
        return sum(c.lengths[0] for c in self._caches.values())
