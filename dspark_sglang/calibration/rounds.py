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


def collect_rounds_via_server(model: str, drafter: str, prompt_ids: Sequence[list[int]], max_new_tokens: int,
                              temperature: float, work_dir, concurrency: int = 32, dtype: str = "float32",
                              timeout_s: float = 3600.0) -> tuple[np.ndarray, np.ndarray]:
    """The same rounds from an SGLang server (`--speculative-algorithm DSPARK --dspark-policy static`, so
    every slot is verified and labelled, with `--dspark-rounds-log`): each prompt ([T] chat ids) is sent
    once at `temperature`; continuous batching makes hundreds of prompts affordable on a CPU.

    Returns:
        (conf_logits [N, γ] raw logits, accept_lens [N]) of the fully verified rounds.
    """
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from dspark_sglang.serving.launcher import launched
    from dspark_sglang.serving.rounds_log import read_rounds
    from dspark_sglang.training.data import GenerationConfig
    from dspark_sglang.training.server_generation import generate_one

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / "sts_rounds.jsonl"
    log.unlink(missing_ok=True)
    flags = ["--dtype", dtype, "--speculative-algorithm", "DSPARK", "--speculative-draft-model-path", drafter,
             "--dspark-policy", "static", "--dspark-prompt-lookup", "off",     # label the drafter's blocks only
             "--dspark-rounds-log", str(log), "--max-running-requests", str(concurrency)]
    sampling = GenerationConfig(temperature=temperature, top_p=1.0, top_k=-1, max_new_tokens=max_new_tokens)

    with launched(model, flags, work_dir / "sts_server.log") as base:
        pool = ThreadPoolExecutor(concurrency)
        try:
            for fut in [pool.submit(generate_one, base, list(ids), sampling, (), timeout_s) for ids in prompt_ids]:
                fut.result()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
    rounds = read_rounds(str(log))
    if rounds.conf is None:
        raise ValueError(f"{drafter}: the served drafter logged no confidence logits (no confidence head?)")
    full = rounds.verified == rounds.conf.shape[1]
    return rounds.conf[full], rounds.accepted[full]
