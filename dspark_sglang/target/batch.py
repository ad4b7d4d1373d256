"""`TargetBatch`: R ragged requests verified in ONE padded target forward (the batched mode).

Each request keeps its own per-layer K/V ([Hkv, L_r, D]). A forward stacks the selected requests'
caches LEFT-padded to the longest one and their new tokens RIGHT-padded to the longest window; a 0/1
attention mask hides both paddings and explicit position_ids keep every request's RoPE positions
absolute. After the forward each request's new K/V entries are cut out of the padded cache again.
Rebuilding the padded cache costs one copy of the live caches per round: simple and exact, fine for an
offline evaluator (a paged KV cache is what a server would use instead).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from dspark_sglang.target.hf_target import HFTarget, TargetOutput

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (k, v), each [Hkv, L, D]."""


class TargetBatch:
    """KV caches of `num_reqs` requests with batched prefill / verify / commit.

    Example:
        >>> batch = target.new_batch(2)  # doctest: +SKIP
        >>> outs = batch.forward([0, 1], [prompt_a, prompt_b])      # prefill both in one forward  # doctest: +SKIP
        >>> batch.commit(0, prompt_a.numel()); batch.commit(1, prompt_b.numel())  # doctest: +SKIP
    """

    def __init__(self, target: HFTarget, num_reqs: int) -> None:
        self.target = target
        self.num_reqs = num_reqs
        self.kv: list[KV | None] = [None] * num_reqs
        self.lengths = [0] * num_reqs
        """Committed tokens per request (host ints)."""

    def forward(self, reqs: Sequence[int], windows: Sequence[torch.Tensor]) -> list[TargetOutput]:
        """Run each request's new tokens (prompt or [anchor, x_1..x_ℓ]) after its committed tokens.

        Args:
            reqs:    request slots, distinct.
            windows: per slot, [W_r] int64 new tokens (W_r ≥ 1), at positions lengths[r]..lengths[r]+W_r-1.

        Returns:
            per slot, TargetOutput(logits [W_r, V], hidden [W_r, n·H]). Every slot must then `commit`.
        """
        device = self.target.device
        past_lens = [self.lengths[r] for r in reqs]
        widths = [int(w.numel()) for w in windows]
        max_past, max_width = max(past_lens), max(widths)
        num = len(reqs)

        input_ids = torch.zeros(num, max_width, dtype=torch.int64, device=device)            # [R', W]
        mask = torch.zeros(num, max_past + max_width, dtype=torch.int64, device=device)      # [R', L+W]
        for i, (r, w) in enumerate(zip(reqs, windows)):
            input_ids[i, :widths[i]] = w.to(device)
            mask[i, max_past - past_lens[i]:max_past + widths[i]] = 1
        position_ids = torch.tensor(past_lens, device=device).unsqueeze(1) + torch.arange(max_width, device=device)

        cache = self._padded_cache(reqs, max_past)
        logits, hidden = self.target.forward(input_ids, position_ids, cache, attention_mask=mask)

        outs = []
        for i, r in enumerate(reqs):
            new = slice(max_past, max_past + widths[i])
            new_kv = [(layer.keys[i, :, new], layer.values[i, :, new]) for layer in cache.layers]
            old = self.kv[r]
            self.kv[r] = new_kv if old is None else [
                (torch.cat([k0, k1], dim=1), torch.cat([v0, v1], dim=1)) for (k0, v0), (k1, v1) in zip(old, new_kv)]
            outs.append(TargetOutput(logits=logits[i, :widths[i]], hidden=hidden[i, :widths[i]]))
        return outs

    def _padded_cache(self, reqs: Sequence[int], max_past: int) -> DynamicCache:
        """The selected requests' K/V stacked and left-padded to `max_past` ([R', Hkv, max_past, D])."""
        if max_past == 0:
            return DynamicCache(config=self.target.config)
        layers = []
        for layer in range(len(self.kv[reqs[0]])):
            ks, vs = [], []
            for r in reqs:
                k, v = self.kv[r][layer]                                                     # [Hkv, L_r, D]
                pad = max_past - k.shape[1]
                ks.append(F.pad(k, (0, 0, pad, 0)))
                vs.append(F.pad(v, (0, 0, pad, 0)))
            layers.append((torch.stack(ks), torch.stack(vs)))
        return DynamicCache(ddp_cache_data=layers, config=self.target.config)

    def commit(self, req: int, num_tokens: int) -> None:
        """Keep the first `num_tokens` tokens of request `req`'s last window; drop the rest."""
        self.lengths[req] += num_tokens
        self.kv[req] = [(k[:, :self.lengths[req]], v[:, :self.lengths[req]]) for k, v in self.kv[req]]

    def release(self, req: int) -> None:
        """Free a finished request's cache."""
        self.kv[req] = None
        self.lengths[req] = 0
