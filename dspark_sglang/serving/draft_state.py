"""Per-request draft context (injected K/V of committed tokens), keyed by SGLang request id.

Each request owns a one-slot `DraftContextCache`, extended incrementally as tokens are committed
(prefill chunks, then x0 + accepted drafts after every verify) and freed when the request finishes.
`extend_many` projects the committed tokens of a whole step in one drafter call and hands each
request its share.
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
        self._end: dict[Hashable, int] = {}
        """rid -> last cached position + 1, kept on the host (the rollback check needs no device read)."""

    def get(self, rid: Hashable) -> DraftContextCache:
        cache = self._caches.get(rid)
        if cache is None:
            cache = self._caches[rid] = self.drafter.new_cache(1)
        return cache

    def _rolled_back(self, rid: Hashable, start_pos: int, count: int) -> DraftContextCache:
        """The request's cache with every entry at >= start_pos dropped (e.g. after a retraction
        re-prefills it); records the `count` tokens about to be cached from start_pos."""
        cache = self.get(rid)
        if self._end.get(rid, 0) > start_pos:
            n = cache.lengths[0]
            keep = int((cache.positions[0, :n] < start_pos).sum())   # sync: rare rollback only
            cache.truncate(0, keep)
        self._end[rid] = start_pos + count
        return cache

    def extend(self, rid: Hashable, target_hidden: torch.Tensor, start_pos: int) -> None:
        """Cache T committed tokens at positions start_pos.. (drops any cached entry at >= start_pos first,
        e.g. after a retraction re-prefills the request)."""
        self.extend_many([rid], target_hidden, [target_hidden.shape[0]], [start_pos])

    def extend_many(self, rids: list[Hashable], target_hidden: torch.Tensor, counts: list[int],
                    start_positions: list[int]) -> None:
        """`extend` for several requests with one projection of all their tokens.

        Args:
            rids:            R request ids (distinct).
            target_hidden:   [Σ counts, n·H] the requests' committed tokens, request after request.
            counts:          R host ints, tokens per request (0 allowed).
            start_positions: R host ints, position of each request's first token.
        """
        if len(rids) != len(counts) or len(rids) != len(start_positions) or target_hidden.shape[0] != sum(counts):
            raise ValueError(f"extend_many: {len(rids)} rids, {len(counts)} counts, {len(start_positions)} "
                             f"start positions and {target_hidden.shape[0]} rows (must be Σ counts = {sum(counts)})")
        if not rids:
            return
        device = self.drafter.device
        positions = torch.cat([torch.arange(p, p + n) for p, n in zip(start_positions, counts)]).to(device)  # [N]
        kv = self.drafter.project_context(target_hidden, positions)           # per layer (k, v) [Hkv, N, D]
        offset = 0
        for rid, n, start in zip(rids, counts, start_positions):
            cache = self._rolled_back(rid, start, n)
            if n:
                cache.append_kv(0, [(k[:, offset:offset + n], v[:, offset:offset + n]) for k, v in kv],
                                positions[offset:offset + n])
            offset += n

    def stacked(self, rids: list[Hashable]):
        caches = [self.get(rid) for rid in rids]
        return caches[0] if len(caches) == 1 else StackedContext(caches)

    def drop(self, rid: Hashable) -> None:
        self._caches.pop(rid, None)
        self._end.pop(rid, None)

    def __len__(self) -> int:
        return len(self._caches)

    def num_cached_tokens(self) -> int:
        return sum(c.lengths[0] for c in self._caches.values())
