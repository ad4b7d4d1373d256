"""Per-request draft context (injected K/V of committed tokens), keyed by SGLang request id.

Each request owns a one-slot `DraftContextCache`, extended incrementally as tokens are committed
(prefill chunks, then x0 + accepted drafts after every verify) and freed when the request finishes.
`extend_many` projects the committed tokens of a whole step in one drafter call and hands each
request its share. `defer_many` queues the same work instead: the decode steps queue their commits and
the queue is applied in one projection when the drafter next reads the contexts (`stacked`), so a run
of plain steps (the draft gate's choice at high concurrency) pays one projection and one pass over the
requests, not one per step (at 16 requests on the 2-core CPU host: ≈ 1.7 ms of every plain step).
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


MAX_PENDING_ROWS = 4096
"""Queued committed tokens (`defer_many`) that trigger a flush: bounds the queue's memory (≈ 19 MB of bf16
features for SmolLM2's four captured layers) when the drafter is not used for a long time."""


class DraftContexts:
    """rid -> one-slot DraftContextCache, with a queue of deferred extensions (`defer_many`).

    `get` and `len` see the caches as they are, without the queue; readers of the K/V go through `stacked`."""

    def __init__(self, drafter: DSparkDrafter, max_pending_rows: int = MAX_PENDING_ROWS) -> None:
        self.drafter = drafter
        self.max_pending_rows = max_pending_rows
        self._caches: dict[Hashable, DraftContextCache] = {}
        self._end: dict[Hashable, int] = {}
        """rid -> last cached position + 1, kept on the host (the rollback check needs no device read)."""
        self._pending: list[tuple] = []
        """Queued events in order: ("extend", rids, hidden [Σ counts, n·H], counts, starts) or ("drop", rid)."""
        self._pending_rows = 0

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
        """`extend` for several requests with one projection of all their tokens (after any queued ones).

        Args:
            rids:            R request ids (distinct).
            target_hidden:   [Σ counts, n·H] the requests' committed tokens, request after request.
            counts:          R host ints, tokens per request (0 allowed).
            start_positions: R host ints, position of each request's first token.
        """
        _check_extend(rids, target_hidden, counts, start_positions)
        self.flush()
        self._apply(rids, target_hidden, counts, start_positions)

    def defer_many(self, rids: list[Hashable], target_hidden: torch.Tensor, counts: list[int],
                   start_positions: list[int]) -> None:
        """Queue `extend_many(rids, target_hidden, counts, start_positions)`; it is applied, in order with
        every other queued extension and drop, at the next `flush` (which `stacked`, `extend_many` and
        `num_cached_tokens` run first, and which runs by itself once `max_pending_rows` tokens wait).
        The caches end up as if each call had been applied at once: the projection is row-wise, so only
        a linear whose rounding depends on the row count can make them differ (packed_linear, which serves
        the drafter on CPU hosts, does not). The caller must not modify `target_hidden` afterwards."""
        _check_extend(rids, target_hidden, counts, start_positions)
        if not rids:
            return
        self._pending.append(("extend", list(rids), target_hidden, list(counts), list(start_positions)))
        self._pending_rows += target_hidden.shape[0]
        if self._pending_rows >= self.max_pending_rows:
            self.flush()

    def flush(self) -> None:
        """Apply the queued extensions in one projection: each request's consecutive queued tokens
        (start = the previous queued end) are merged into one run; a run that does not continue the
        previous one (a rollback, a gap) is applied after it, in queue order; a drop discards the
        request's queued tokens."""
        if not self._pending:
            return
        events, self._pending, self._pending_rows = self._pending, [], 0
        runs: list[list] = []                      # [rid, start, count, [(first row, rows), ...]] in order
        open_run: dict[Hashable, list] = {}        # rid -> its last run, while tokens may still continue it
        hiddens, offset = [], 0
        for event in events:
            if event[0] == "drop":
                rid = event[1]
                open_run.pop(rid, None)
                runs = [run for run in runs if run[0] != rid]
                continue
            _, rids, hidden, counts, starts = event
            hiddens.append(hidden)
            for rid, n, start in zip(rids, counts, starts):
                run = open_run.get(rid)
                if run is not None and start == run[1] + run[2]:
                    run[2] += n
                    run[3].append((offset, n))
                else:
                    run = open_run[rid] = [rid, start, n, [(offset, n)]]
                    runs.append(run)
                offset += n
        if not runs:
            return
        hidden = hiddens[0] if len(hiddens) == 1 else torch.cat(hiddens)                  # [Σ rows, n·H]
        rows = [r for run in runs for first, n in run[3] for r in range(first, first + n)]
        if rows != list(range(hidden.shape[0])):
            hidden = hidden[torch.tensor(rows, dtype=torch.int64, device=hidden.device)]  # run after run
        self._apply([run[0] for run in runs], hidden, [run[2] for run in runs], [run[1] for run in runs])

    def _apply(self, rids: list[Hashable], target_hidden: torch.Tensor, counts: list[int],
               start_positions: list[int]) -> None:
        """Project and cache, request after request (a rid may repeat: its runs apply in order)."""
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
        """The contexts of `rids` (queued extensions applied first) as one cache-like object."""
        self.flush()
        caches = [self.get(rid) for rid in rids]
        return caches[0] if len(caches) == 1 else StackedContext(caches)

    def drop(self, rid: Hashable) -> None:
        """Release the request's context and discard its queued tokens."""
        self._caches.pop(rid, None)
        self._end.pop(rid, None)
        if self._pending:
            self._pending.append(("drop", rid))

    def __len__(self) -> int:
        return len(self._caches)

    def num_cached_tokens(self) -> int:
        self.flush()
        return sum(c.lengths[0] for c in self._caches.values())


def _check_extend(rids: list, target_hidden: torch.Tensor, counts: list[int], start_positions: list[int]) -> None:
    if len(rids) != len(counts) or len(rids) != len(start_positions) or target_hidden.shape[0] != sum(counts):
        raise ValueError(f"extend_many: {len(rids)} rids, {len(counts)} counts, {len(start_positions)} "
                         f"start positions and {target_hidden.shape[0]} rows (must be Σ counts = {sum(counts)})")
