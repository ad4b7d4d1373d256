"""Verification rounds for STS fitting: REAL stochastic acceptance outcomes of the verify op.

Runs the offline `SpeculativeDecoder` (every round verifies all γ drafts, no threshold, no STS) on
held-out prompts at the serving temperature and returns, per round, the raw confidence logits and
the accepted-draft count. The evaluator records c_k = σ(z_k) (with STS temperatures of 1), so z_k is
recovered as logit(c_k), clipped where float32 saturates.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

CLIP = 1e-6


def rounds_from_results(results) -> tuple[np.ndarray, np.ndarray]:
    """(conf_logits [N, γ], accept_lens [N]) of every fully verified round of `RequestResult`s."""
    logits, accepts = [], []
    for res in results:
        for rnd in res.rounds:
            if rnd.confidence is None or rnd.verify_len != len(rnd.confidence):
                continue
            c = np.clip(np.asarray(rnd.confidence, dtype=np.float64), CLIP, 1 - CLIP)
            logits.append(np.log(c) - np.log1p(-c))
            accepts.append(rnd.accept_len)
    if not logits:
        raise ValueError("no fully verified rounds with confidences (does the drafter have a confidence head?)")
    return np.stack(logits), np.asarray(accepts)


@torch.no_grad()
def collect_rounds(target, drafter, prompts: Sequence[torch.Tensor], max_new_tokens: int, temperature: float,
                   top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Run batch-1 speculative decoding on `prompts` ([T] int64 chat ids) and return its rounds."""
    from dspark_sglang.evaluation.spec_decode import SpeculativeDecoder
    from dspark_sglang.sampling import SamplingBatch
    decoder = SpeculativeDecoder(target, drafter)
    gen = torch.Generator(device=target.device).manual_seed(seed)
    results = []
    for p in prompts:
        sampling = SamplingBatch.from_lists([temperature], [top_k], [top_p])
        results += decoder.generate([p], max_new_tokens, sampling, gen, batched=False)
    return rounds_from_results(results)
