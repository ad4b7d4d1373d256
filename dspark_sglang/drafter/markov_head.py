"""Markov sequential heads (DSpark §3.1): a low-rank bias B_k(x_{k-1}, ·) added to the parallel
drafter's logits, sampled left to right.

    logits_k = lm_head(h_k) + B_k          q_k = logits_to_probs(logits_k)          x_k ~ q_k

Slot 0 uses the anchor x0 as x_{-1}. One class per `markov_head_type`; `build_markov_head` picks it,
so the sampling loop in `MarkovHead.sample_block` has no type branches. `markov_rank = 0` gives
`NoMarkovHead`: plain DFlash, all slots sampled in parallel, no parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dspark_sglang.drafter.config import DrafterConfig
from dspark_sglang.sampling import SamplingBatch, logits_to_probs, sample_tokens


class MarkovHead(nn.Module):
    """Base: owns `markov_w1` (Embedding [V, r]) and `markov_w2` (Linear r→V, no bias) and the
    left-to-right sampling loop. Subclasses define `step`."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.rank = config.markov_rank
        self.markov_w1 = nn.Embedding(config.vocab_size, config.markov_rank)
        self.markov_w2 = nn.Linear(config.markov_rank, config.vocab_size, bias=False)

    def prev_features(self, prev_ids: torch.Tensor) -> torch.Tensor:
        """W1[x_{k-1}]: prev_ids [...] int64 -> [..., r] (also the confidence head's Markov input)."""
        return self.markov_w1(prev_ids)

    def init_state(self, h: torch.Tensor) -> torch.Tensor | None:
        """Recurrent state s_{-1} for a block h [R, γ, H]; None for stateless heads."""
        return None

    def step(self, h_k: torch.Tensor, prev_ids: torch.Tensor, state: torch.Tensor | None,
             w2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """h_k [R, H], prev_ids [R] (full-vocabulary ids) -> (bias B_k [R, V] float32, next state).
        `w2` [V', r]: rows of markov_w2 to project onto (a draft vocabulary) -> bias [R, V']."""
        raise NotImplementedError

    def project(self, x: torch.Tensor, w2: torch.Tensor | None) -> torch.Tensor:
        """W2 x over the full vocabulary, or over the rows `w2` [V', r]: [R, r] -> [R, V or V'] float32."""
        if w2 is None:
            return self.markov_w2(x).float()
        return (w2(x) if isinstance(w2, nn.Module) else F.linear(x, w2)).float()

    def sample_block(self, h: torch.Tensor, base_logits: torch.Tensor, anchor_ids: torch.Tensor,
                     sampling: SamplingBatch, generator: torch.Generator | None, need_probs: bool = True,
                     vocab_ids: torch.Tensor | None = None, w2: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sequential sampling of the γ drafts.

        Args:
            h:           [R, γ, H] final block hidden states.
            base_logits: [R, γ, V] float32 lm_head(h) ([R, γ, V'] over a draft vocabulary).
            anchor_ids:  [R] int64 x0.
            need_probs:  False lets an all-greedy batch skip the γ softmaxes (argmax only; probs None).
            vocab_ids:   [V'] draft vocabulary (column j of the logits is token vocab_ids[j]), with `w2` =
                         markov_w2.weight[vocab_ids]; None = the full vocabulary.
        Returns:
            draft_ids [R, γ] int64 (full-vocabulary ids), draft_probs [R, γ, V or V'] float32 (the
            processed q_k each x_k came from) or None (need_probs=False and every request greedy).
        """
        argmax_only = not need_probs and bool(sampling.is_greedy.all())  # sync: small parameter tensor
        prev = anchor_ids                                                          # [R]
        state = self.init_state(h)
        ids, probs = [], []
        for k in range(h.shape[1]):
            bias, state = self.step(h[:, k], prev, state, w2)                      # [R, V or V']
            if argmax_only:
                col = (base_logits[:, k] + bias).argmax(dim=-1)                    # [R]
            else:
                q_k = logits_to_probs(base_logits[:, k] + bias, sampling)          # [R, V or V']
                col = sample_tokens(q_k, sampling, generator)                      # [R]
                probs.append(q_k)
            prev = col if vocab_ids is None else vocab_ids[col]
            ids.append(prev)
        return torch.stack(ids, dim=1), (torch.stack(probs, dim=1) if probs else None)


class VanillaMarkovHead(MarkovHead):
    """B_k = W2 W1[x_{k-1}]."""

    def step(self, h_k, prev_ids, state, w2=None):
        return self.project(self.markov_w1(prev_ids), w2), state                  # [R, V]


class GatedMarkovHead(MarkovHead):
    """B_k = W2 (W1[x_{k-1}] ⊙ σ(gate_proj([h_k; W1[x_{k-1}]])))."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__(config)
        self.gate_proj = nn.Linear(config.hidden_size + config.markov_rank, config.markov_rank)

    def step(self, h_k, prev_ids, state, w2=None):
        e = self.markov_w1(prev_ids)                                               # [R, r]
        gate = torch.sigmoid(self.gate_proj(torch.cat([h_k, e], dim=-1)))         # [R, r]
        return self.project(e * gate, w2), state                                  # [R, V]


class RNNMarkovHead(MarkovHead):
    """z = [s_{k-1}; W1[x_{k-1}]; h_k]; (g, c, o) = split(joint_proj(z));
    s_k = σ(g)⊙s_{k-1} + (1−σ(g))⊙tanh(c); B_k = W2 tanh(o); s_{-1} = 0."""

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__(config)
        self.joint_proj = nn.Linear(2 * config.markov_rank + config.hidden_size, 3 * config.markov_rank)

    def init_state(self, h):
        return h.new_zeros(h.shape[0], self.rank)                                  # [R, r]

    def step(self, h_k, prev_ids, state, w2=None):
        e = self.markov_w1(prev_ids)                                               # [R, r]
        g, c, o = self.joint_proj(torch.cat([state, e, h_k], dim=-1)).chunk(3, dim=-1)  # 3 × [R, r]
        gate = torch.sigmoid(g)
        state = gate * state + (1 - gate) * torch.tanh(c)                          # [R, r]
        return self.project(torch.tanh(o), w2), state                             # [R, V]


class NoMarkovHead(nn.Module):
    """markov_rank = 0: plain DFlash. No parameters; all γ slots are sampled in parallel."""

    rank = 0

    def prev_features(self, prev_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*prev_ids.shape, 0, device=prev_ids.device)            # [..., 0]

    def sample_block(self, h, base_logits, anchor_ids, sampling, generator, need_probs=True, vocab_ids=None,
                     w2=None):
        if not need_probs and bool(sampling.is_greedy.all()):  # sync: small parameter tensor
            cols, probs = base_logits.argmax(dim=-1), None                         # [R, γ]
        else:
            probs = logits_to_probs(base_logits, sampling)                         # [R, γ, V or V']
            cols = sample_tokens(probs, sampling, generator)
        return (cols if vocab_ids is None else vocab_ids[cols]), probs


MARKOV_HEADS: dict[str, type[MarkovHead]] = {
    "vanilla": VanillaMarkovHead,
    "gated": GatedMarkovHead,
    "rnn": RNNMarkovHead,
}


def build_markov_head(config: DrafterConfig) -> MarkovHead | NoMarkovHead:
    """The head for `config.markov_head_type`, or `NoMarkovHead` when markov_rank == 0."""
    if config.markov_rank == 0:
        return NoMarkovHead()
    return MARKOV_HEADS[config.markov_head_type](config)
