"""DSpark training loss (DSpark §4, DeepSpec recipe), per block slot k = 0..γ-1:

    L_k = w_ce·CE(draft_k, y_k) + w_l1·‖softmax(draft_k) − softmax(target_k)‖₁
          + w_bce·BCE(conf_k, 1 − ½‖softmax(draft_k) − softmax(target_k)‖₁ detached)

draft_k = lm_head(h_k) + B_k(x_{k-1}) with the Markov bias teacher-forced on the TRUE previous token
(x_{-1} = the anchor); target_k = lm_head(final target hidden at position p+k) (the target's own
distribution for token p+k+1, recomputed from the cache). 1 − ½‖p − q‖₁ is the probability that a
draft sampled from q is accepted against p (speculative sampling at T=1), hence the confidence label.
Each slot is weighted exp(−k/decay) and the loss is averaged over the VALID slots (label inside the
answer) with those weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    ce: float = 0.1
    l1: float = 0.9
    bce: float = 1.0
    decay: float = 4.0


def teacher_forced_logits(drafter, h: torch.Tensor, prev_ids: torch.Tensor, vocab_ids: torch.Tensor | None = None,
                          confidence_detached: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draft logits lm_head(h) + Markov bias, and confidence logits, with teacher-forced x_{k-1}.

    Args:
        h:         [M, γ, H] block hidden states.
        prev_ids:  [M, γ] int64 x_{k-1}: the anchor, then the true tokens p+1..p+γ-1.
        vocab_ids: [V'] int64 optional vocabulary subset: logits only for these rows of lm_head / W2
                   (a CPU-budget approximation, vanilla Markov head only); None = the full vocabulary.
        confidence_detached: the confidence head reads h.detach() (its loss does not train the backbone).
    Returns:
        logits [M, γ, V or V'] float32, conf_logits [M, γ] float32 or None.
    """
    head = drafter.markov_head
    if vocab_ids is not None:
        weight = drafter.lm_head.weight[vocab_ids]                                   # [V', H]
        base = F.linear(h.to(weight.dtype), weight).float()                          # [M, γ, V']
        if head.rank > 0:
            if type(head).__name__ != "VanillaMarkovHead":
                raise ValueError("a vocabulary subset supports only the vanilla Markov head")
            base = base + F.linear(head.markov_w1(prev_ids), head.markov_w2.weight[vocab_ids]).float()
    else:
        base = drafter.lm_head(h.to(drafter.lm_head.weight.dtype)).float()          # [M, γ, V]
    if head.rank > 0 and vocab_ids is None:
        state = head.init_state(h)
        biases = []
        for k in range(h.shape[1]):
            bias, state = head.step(h[:, k], prev_ids[:, k], state)                  # [M, V]
            biases.append(bias)
        base = base + torch.stack(biases, dim=1)
    conf = None
    if drafter.confidence_head is not None:
        conf = drafter.confidence_head(h.detach() if confidence_detached else h,
                                       head.prev_features(prev_ids))                   # [M, γ]
    return base, conf


def dspark_loss(logits: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                conf_logits: torch.Tensor | None, weights: LossWeights = LossWeights()
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted DSpark loss over a set of blocks.

    Args:
        logits:        [M, γ, V] draft logits (with Markov bias).
        target_logits: [M, γ, V] target logits for the same positions.
        labels:        [M, γ] int64 true next tokens (any value where invalid).
        valid:         [M, γ] bool valid slots (a prefix of each block).
        conf_logits:   [M, γ] confidence logits or None (no confidence head).
    Returns:
        (scalar loss, {"loss", "ce", "l1", "bce", "acc"} floats: slot-weighted means).

    Example (hand-worked, see test_training_losses): one slot, V=2, logits [0, 0], target [0, log 3]
    -> p_d=(.5,.5), p_t=(.25,.75), CE(label 1)=log 2, L1=0.5, label c=0.75.
    """
    gamma = logits.shape[1]
    k = torch.arange(gamma, device=logits.device, dtype=torch.float32)
    w = torch.exp(-k / weights.decay).unsqueeze(0) * valid.float()                   # [M, γ]
    norm = w.sum().clamp_min(1e-8)
    logp = F.log_softmax(logits, dim=-1)
    p_d = logp.exp()
    p_t = F.softmax(target_logits.float(), dim=-1)
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    ce = -logp.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)                    # [M, γ]
    l1 = (p_d - p_t).abs().sum(-1)                                                   # [M, γ]
    total = weights.ce * ce + weights.l1 * l1
    stats = {}
    if conf_logits is not None and weights.bce > 0:
        conf_label = (1 - 0.5 * l1).detach().clamp(0, 1)
        bce = F.binary_cross_entropy_with_logits(conf_logits.float(), conf_label, reduction="none")
        total = total + weights.bce * bce
        stats["bce"] = float((bce.detach() * w).sum() / norm)
    loss = (total * w).sum() / norm
    acc = (logits.argmax(-1) == labels).float()
    ce, l1 = ce.detach(), l1.detach()
    stats.update(loss=float(loss.detach()), ce=float((ce * w).sum() / norm), l1=float((l1 * w).sum() / norm),
                 acc=float((acc * valid).sum() / valid.sum().clamp_min(1)))
    return loss, stats
