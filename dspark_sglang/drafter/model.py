"""`DSparkDrafter`: DeepSpec `Qwen3DSparkModel` inference (parallel block drafter + Markov head +
confidence head) in pure PyTorch, device-agnostic.

One round (DSpark §3, "anchor-first"): the block [x0, m, ..., m] (γ slots, m = mask_token_id) at
absolute positions anchor_pos .. anchor_pos+γ-1 runs through the draft layers in ONE pass, attending
to the injected K/V of every committed token (positions < anchor_pos) and bidirectionally inside the
block; slot k predicts the token at anchor_pos + k + 1. The Markov head then samples x_1..x_γ left to
right and the confidence head scores them.

The target's `embed_tokens` and `lm_head` are referenced, not registered: they are not parameters of
this module, not in its state_dict, and `.to()` does not move them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dspark_sglang.drafter.block import DraftBlock
from dspark_sglang.drafter.confidence_head import ConfidenceHead
from dspark_sglang.drafter.config import DrafterConfig
from dspark_sglang.drafter.context_cache import DraftContextCache
from dspark_sglang.drafter.layers import DSparkDecoderLayer, RMSNorm
from dspark_sglang.drafter.markov_head import build_markov_head
from dspark_sglang.drafter.rope import RotaryEmbedding
from dspark_sglang.sampling import SamplingBatch, logits_to_probs, sample_tokens


HEAD_ROWS_PER_CALL = 12
"""Rows per draft-head call in pruned drafting (`DSparkDrafter._propose_pruned`): about where a head call
stops being bound by reading the weight and becomes bound by its arithmetic (2-core CPU host, bf16:
≈ 15 GB/s against ≈ 170 GFLOP/s)."""


class DSparkDrafter(nn.Module):
    """DSpark drafter with DeepSpec parameter names (`fc`, `hidden_norm`, `layers.{i}.*`, `norm`,
    `markov_head.*`, `confidence_head.proj`).

    Args:
        config:       the drafter's `DrafterConfig`.
        embed_tokens: the target's input embedding, weight [V, H] (frozen, shared).
        lm_head:      the target's output projection, weight [V, H] (frozen, shared).

    Example:
        >>> drafter = DSparkDrafter(cfg, target.model.embed_tokens, target.lm_head)  # doctest: +SKIP
        >>> cache = drafter.new_cache(1)  # doctest: +SKIP
        >>> drafter.append_context(cache, 0, feats, torch.arange(feats.shape[0]))  # doctest: +SKIP
        >>> block = drafter.propose(cache, anchor_ids, anchor_positions, SamplingBatch.greedy(1))  # doctest: +SKIP
    """

    def __init__(self, config: DrafterConfig, embed_tokens: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        for name, module in (("embed_tokens", embed_tokens), ("lm_head", lm_head)):
            shape = tuple(module.weight.shape)
            if shape != (config.vocab_size, config.hidden_size):
                raise ValueError(f"target {name}.weight must be [vocab_size={config.vocab_size}, "
                                 f"hidden_size={config.hidden_size}]; got {list(shape)}")
        self.config = config
        self.fc = nn.Linear(config.num_context_features, config.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.layers = nn.ModuleList(DSparkDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config)
        self.markov_head = build_markov_head(config)
        self.confidence_head = ConfidenceHead(config) if config.enable_confidence_head else None
        # Plain attributes (bypassing nn.Module registration): shared with the target, never saved.
        self.__dict__["embed_tokens"] = embed_tokens
        self.__dict__["lm_head"] = lm_head
        self.register_buffer("draft_vocab_ids", None, persistent=False)
        """[V'] int64 ids drafted from (`draft_vocab.py`), or None = the full vocabulary."""
        self._draft_weights: tuple | None = None
        self.packed_heads = False
        """Draft-vocabulary heads as `PackedLinear` (set by `packed_inference.pack_for_inference`)."""

    # ------------------------------------------------------------------ draft vocabulary
    def set_draft_vocab(self, ids: torch.Tensor | None) -> None:
        """Draft only from the sorted ids `ids` [V'] (None: the whole vocabulary)."""
        self.draft_vocab_ids = None if ids is None else ids.to(device=self.lm_head.weight.device, dtype=torch.int64)
        self._draft_weights = None

    def draft_head_weights(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(lm_head rows [V', H], their bias [V'] or None, markov_w2 rows [V', r] or None) of the draft
        vocabulary, gathered once and cached (the target's lm_head is frozen); all None without one."""
        if self.draft_vocab_ids is None:
            return None, None, None
        key = (self.lm_head.weight.data_ptr(), self.lm_head.weight.dtype, self.draft_vocab_ids.device)
        if self._draft_weights is None or self._draft_weights[0] != key:
            ids = self.draft_vocab_ids
            bias = getattr(self.lm_head, "bias", None)
            weight, bias = self.lm_head.weight[ids].detach(), None if bias is None else bias[ids].detach()
            w2 = self.markov_head.markov_w2.weight[ids].detach() if self.markov_head.rank > 0 else None
            if self.packed_heads:    # one packed linear each: lm_head rows with their bias, markov_w2 rows
                from dspark_sglang.drafter.packed_inference import PackedLinear

                weight, bias, w2 = PackedLinear(weight, bias), None, None if w2 is None else PackedLinear(w2)
            self._draft_weights = (key, weight, bias, w2)
        return self._draft_weights[1:]

    def draft_logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(lm_head(h) [..., V] float32, None), or over the draft vocabulary ([..., V'], markov_w2 rows)."""
        weight, bias, w2 = self.draft_head_weights()
        if weight is None:
            return self.lm_head(h.to(self.lm_head.weight.dtype)).float(), None
        if isinstance(weight, nn.Module):   # packed (bias inside)
            return weight(h).float(), w2
        return F.linear(h.to(weight.dtype), weight, bias).float(), w2

    def _full_vocab_probs(self, probs: torch.Tensor | None) -> torch.Tensor | None:
        """q over the draft vocabulary [..., V'] -> [..., V] (zero elsewhere); identity without one."""
        if probs is None or self.draft_vocab_ids is None:
            return probs
        full = probs.new_zeros(*probs.shape[:-1], self.config.vocab_size)
        return full.index_copy_(-1, self.draft_vocab_ids, probs)   # 3-4x faster than full[..., ids] = probs

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    # ------------------------------------------------------------------ context (KV injection)
    def new_cache(self, batch_size: int, initial_capacity: int = 64) -> DraftContextCache:
        """An empty context cache for `batch_size` request slots on this drafter's device/dtype."""
        cfg = self.config
        return DraftContextCache(batch_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
                                 dtype=self.dtype, device=self.device, project=self.project_context,
                                 initial_capacity=initial_capacity)

    @torch.no_grad()
    def project_context(self, target_hidden: torch.Tensor,
                        positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer injected K/V of committed tokens.

        Args:
            target_hidden: [T, n·H] target features of `target_layer_ids`, concatenated in that order.
            positions:     [T] int64 absolute positions.
        Returns:
            per draft layer (k, v), each [Hkv, T, D].
        """
        ctx = self.hidden_norm(self.fc(target_hidden.to(self.device, self.dtype)))               # [T, H]
        cos, sin = self.rotary(positions.to(self.device))                            # [T, D] each
        return [layer.self_attn.context_kv(ctx, cos, sin) for layer in self.layers]

    def append_context(self, cache: DraftContextCache, req: int, target_hidden: torch.Tensor,
                       positions: torch.Tensor) -> None:
        """Cache the injected K/V of newly committed tokens of request `req` (computed once, never again).

        Args:
            cache:         from `new_cache`.
            req:           slot index.
            target_hidden: [T, n·H] target features of the committed tokens.
            positions:     [T] int64 their absolute positions (all < the next anchor position).
        """
        cache.append(req, target_hidden, positions)

    # ------------------------------------------------------------------ block forward
    @torch.no_grad()
    def block_hidden(self, cache: DraftContextCache, block_ids: torch.Tensor,
                     anchor_positions: torch.Tensor) -> torch.Tensor:
        """Final hidden states of arbitrary blocks.

        Args:
            cache:            context of the R = cache.batch_size requests.
            block_ids:        [R, γ'] int64 block tokens (normally [x0, m, ..., m]).
            anchor_positions: [R] int64 absolute position of block slot 0.
        Returns:
            h: [R, γ', H] after the final `norm`. Slot j sits at anchor_positions + j; only cached
            context entries at positions < anchor_positions are visible.
        """
        width = block_ids.shape[1]
        positions = anchor_positions.unsqueeze(1) + torch.arange(width, device=block_ids.device)  # [R, γ']
        cos, sin = self.rotary(positions)                                            # [R, γ', D] each
        ctx_mask = cache.visible_mask(anchor_positions)                              # [R, L]
        x = self.embed_tokens(block_ids).to(self.dtype)                              # [R, γ', H]
        for i, layer in enumerate(self.layers):
            ctx_k, ctx_v = cache.layer_kv(i)                                         # [R, Hkv, L, D] each
            x = layer(x, cos, sin, ctx_k, ctx_v, ctx_mask)
        return self.norm(x)

    def make_block_ids(self, anchor_ids: torch.Tensor) -> torch.Tensor:
        """[R] anchors -> [R, γ] blocks [x0, m, ..., m]."""
        block_ids = torch.full((anchor_ids.shape[0], self.config.block_size), self.config.mask_token_id,
                               dtype=torch.int64, device=anchor_ids.device)          # [R, γ]
        block_ids[:, 0] = anchor_ids
        return block_ids

    # ------------------------------------------------------------------ drafting
    @torch.no_grad()
    def propose(self, cache: DraftContextCache, anchor_ids: torch.Tensor, anchor_positions: torch.Tensor,
                sampling: SamplingBatch, generator: torch.Generator | None = None,
                keep_base_logits: bool = False, need_probs: bool = True, survival_floor: float = 0.0,
                sts_temperatures: torch.Tensor | None = None, keep_slots: int = 0,
                sts_biases: torch.Tensor | None = None) -> DraftBlock:
        """Draft γ tokens for every request of `cache`.

        Args:
            cache:            context of R = cache.batch_size requests (committed tokens only).
            anchor_ids:       [R] int64 x0, the last committed (bonus) token.
            anchor_positions: [R] int64 absolute position of x0.
            sampling:         per-request temperature / top-k / top-p (greedy rows take the argmax).
            generator:        RNG for sampled rows (on the drafter's device); None = global RNG.
            keep_base_logits: also return lm_head(h) before the Markov bias ([R, γ, V] float32; over a
                              draft vocabulary [R, γ, V'], column j = token draft_vocab_ids[j]).
            need_probs:       False: an all-greedy batch returns draft_probs None (greedy verification
                              needs only the ids; saves γ full-vocabulary softmaxes per request).
            survival_floor:   > 0 (needs a confidence head): slot k of a request is drafted only while its
                              prefix survival a_k = Π_{i≤k} σ(z_i / T_i + b_i) stays above the floor — a slot the
                              scheduler can never admit (`scheduling.admission_floor`) costs no lm_head row.
                              Pruned slots get conf_logit −inf (survival 0), draft id 0 and zero probs.
            sts_temperatures: [γ] STS temperatures T of that survival (None = 1).
            keep_slots:       the first `keep_slots` slots are always drafted (the scheduler's min_len).
            sts_biases:       [γ] logit offsets b of that survival (None = 0; the serving worker's online
                              calibration, `calibration.online_calibration`).
        Returns:
            DraftBlock(draft_ids [R, γ], draft_probs [R, γ, V] or None, conf_logits [R, γ] or None, base_logits).
        """
        num_reqs = cache.batch_size
        if anchor_ids.shape != (num_reqs,) or anchor_positions.shape != (num_reqs,) \
                or sampling.num_reqs != num_reqs:
            raise ValueError(f"anchor_ids, anchor_positions and sampling must cover the cache's {num_reqs} "
                             f"requests; got {tuple(anchor_ids.shape)}, {tuple(anchor_positions.shape)}, "
                             f"{sampling.num_reqs}")
        h = self.block_hidden(cache, self.make_block_ids(anchor_ids), anchor_positions)  # [R, γ, H]
        if survival_floor > 0.0 and not keep_base_logits:
            if self.confidence_head is None or self.markov_head.rank == 0:
                raise ValueError("survival_floor needs a drafter with a confidence head and a Markov head")
            return self._propose_pruned(h, anchor_ids, sampling, generator, need_probs, survival_floor,
                                        sts_temperatures, keep_slots, sts_biases)
        base_logits, w2 = self.draft_logits(h)                                       # [R, γ, V or V']
        draft_ids, draft_probs = self.markov_head.sample_block(
            h, base_logits, anchor_ids, sampling, generator, need_probs, self.draft_vocab_ids, w2)
        draft_probs = self._full_vocab_probs(draft_probs)                            # [R, γ, V]
        conf_logits = None
        if self.confidence_head is not None:
            prev_ids = torch.cat([anchor_ids.unsqueeze(1), draft_ids[:, :-1]], dim=1)  # [R, γ] x_{k-1}
            conf_logits = self.confidence_head(h, self.markov_head.prev_features(prev_ids))  # [R, γ]
        return DraftBlock(draft_ids=draft_ids, draft_probs=draft_probs, conf_logits=conf_logits,
                          base_logits=base_logits if keep_base_logits else None)

    def _propose_pruned(self, h: torch.Tensor, anchor_ids: torch.Tensor, sampling: SamplingBatch,
                        generator: torch.Generator | None, need_probs: bool, survival_floor: float,
                        sts_temperatures: torch.Tensor | None, keep_slots: int,
                        sts_biases: torch.Tensor | None = None) -> DraftBlock:
        """`propose` for the requests whose survival can still be admitted. Slot 1's confidence needs only
        h and the anchor, and survival never grows along the block, so requests with a_1 <= floor cost no
        lm_head at all; the others are sampled left to right while a_k stays above the floor, their
        base-logit rows computed in chunks (below). The drafted slots are
        exactly what the unpruned loop draws (same h, bias, previous token and sampling); only the RNG
        stream of sampled rows differs.

        The base logits of the alive requests are computed in chunks of slots, each for the requests still
        drafting when the chunk starts, so that a call has about `HEAD_ROWS_PER_CALL` rows: one request
        gets all its γ slots in one call (the weight read once), sixteen get one slot per call and the
        slots pruned meanwhile are never computed (with the shipped drafter at 16 requests: 112 rows of
        the 10608-row draft head became ≈ 35)."""
        num_reqs, gamma, _ = h.shape
        device = h.device
        temps = (torch.ones(gamma, device=device) if sts_temperatures is None
                 else sts_temperatures.to(device=device, dtype=torch.float32))
        biases = (torch.zeros(gamma, device=device) if sts_biases is None
                  else sts_biases.to(device=device, dtype=torch.float32))
        argmax_only = not need_probs and bool(sampling.is_greedy.all())       # sync: small parameter tensor
        draft_ids = torch.zeros(num_reqs, gamma, dtype=torch.int64, device=device)          # [R, γ]
        conf_logits = torch.full((num_reqs, gamma), float("-inf"), device=device)           # [R, γ]
        probs_vocab = self.config.vocab_size if self.draft_vocab_ids is None else self.draft_vocab_ids.numel()
        draft_probs = None if argmax_only else torch.zeros(num_reqs, gamma, probs_vocab,
                                                            device=device)                  # [R, γ, V or V']
        prev = anchor_ids.clone()                                                           # [R] x_{k-1}
        z = self.confidence_head(h[:, :1], self.markov_head.prev_features(prev).unsqueeze(1)).squeeze(1)  # [R]
        survival = torch.sigmoid(z / temps[0] + biases[0])                                  # [R] a_1
        keep = survival > survival_floor if keep_slots == 0 else torch.ones_like(z, dtype=torch.bool)
        rows = keep.nonzero().squeeze(1)                                                    # [n] drafted requests
        if rows.numel() == 0:                                                               # sync: loop bound
            return DraftBlock(draft_ids=draft_ids, draft_probs=self._full_vocab_probs(draft_probs),
                              conf_logits=conf_logits)
        h_alive = h[rows]                                                                   # [n, γ, H]
        local = torch.arange(rows.numel(), device=device)                                   # rows -> h_alive index
        state = self.markov_head.init_state(h_alive)                                        # [n, r] or None
        z = z[rows]
        base = chunk_rows = None       # base logits of slots [chunk_start, chunk_end) for the rows alive then
        chunk_start = chunk_end = 0
        for k in range(gamma):
            if k > 0:
                z = self.confidence_head(h_alive[local, k].unsqueeze(1),
                                         self.markov_head.prev_features(prev[rows]).unsqueeze(1)).squeeze(1)
                survival[rows] = survival[rows] * torch.sigmoid(z / temps[k] + biases[k])
                if k >= keep_slots:
                    keep = survival[rows] > survival_floor
                    rows, local, z, chunk_rows = rows[keep], local[keep], z[keep], chunk_rows[keep]
                    if rows.numel() == 0:                                                   # sync: loop bound
                        break
            if k >= chunk_end:        # the next slots' base logits, for the rows still drafting
                width = min(gamma - k, max(1, -(-HEAD_ROWS_PER_CALL // rows.numel())))
                base, w2 = self.draft_logits(h_alive[local, k:k + width])                   # [n_k, width, V']
                chunk_start, chunk_end = k, k + width
                chunk_rows = torch.arange(rows.numel(), device=device)                      # rows -> base index
            conf_logits[rows, k] = z
            sub = sampling.select(rows)
            bias, new_state = self.markov_head.step(h_alive[local, k], prev[rows],
                                                    None if state is None else state[local], w2)  # [n, V']
            if state is not None:
                state[local] = new_state
            logits = base[chunk_rows, k - chunk_start] + bias                               # [n, V]
            if argmax_only:
                ids = logits.argmax(dim=-1)                                                 # [n]
            else:
                q = logits_to_probs(logits, sub)                                            # [n, V or V']
                ids = sample_tokens(q, sub, generator)
                draft_probs[rows, k] = q
            if self.draft_vocab_ids is not None:
                ids = self.draft_vocab_ids[ids]                                             # full-vocabulary ids
            draft_ids[rows, k] = ids
            prev[rows] = ids
        return DraftBlock(draft_ids=draft_ids, draft_probs=self._full_vocab_probs(draft_probs), conf_logits=conf_logits)
