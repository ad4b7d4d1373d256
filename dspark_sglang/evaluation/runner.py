"""`run_evaluation`: datasets × (speculative decoding, plain HF generate) -> per-dataset summaries.

The library behind `python/eval_acceptance.py`. Batch-1 mode (batch_size=1) is the paper's protocol;
batch_size > 1 runs chunks of prompts through the batched target forward (and HF generate with the
same batch size for the speed baseline).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from dspark_sglang.calibration.sts import read_temperatures
from dspark_sglang.evaluation.baseline import hf_generate
from dspark_sglang.evaluation.datasets import encode_chat, load_first_turns
from dspark_sglang.evaluation.drafters import load_drafter_for, random_drafter
from dspark_sglang.evaluation.records import RequestResult
from dspark_sglang.evaluation.spec_decode import SpeculativeDecoder
from dspark_sglang.evaluation.summary import summarize
from dspark_sglang.sampling import SamplingBatch
from dspark_sglang.target import HFTarget

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
RANDOM_DRAFTER = "random"


@dataclass
class EvalConfig:
    """Everything one evaluation run needs (the CLI flags)."""

    datasets: list[str]
    """Paths of `{"turns": [...]}` jsonl files."""
    target: str
    """HF folder of the target (default in the CLI: the converted SmolLM2)."""
    drafter: str = RANDOM_DRAFTER
    """DeepSpec checkpoint folder, or "random" for a random-weight drafter."""
    num_samples: int = 10
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    block_size: int = 7
    """γ of a random drafter (a checkpoint's own block_size must equal it)."""
    target_layer_ids: list[int] = field(default_factory=lambda: [1, 15, 28])
    """Layers a random drafter reads (a checkpoint brings its own)."""
    threshold: float | None = None
    sts: str | None = None
    """JSON file: a list of γ STS temperatures, or {"temperatures": [...]}."""
    batch_size: int = 1
    dtype: str = "float32"
    seed: int = 0
    baseline: bool = True
    """Also time plain HF generate on the same prompts."""
    device: str = "cpu"


def build_decoder(cfg: EvalConfig) -> tuple[SpeculativeDecoder, Any]:
    """Target + drafter + decoder (and the tokenizer) for `cfg`."""
    from transformers import AutoTokenizer

    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {cfg.dtype!r}")
    dtype = DTYPES[cfg.dtype]
    if cfg.drafter == RANDOM_DRAFTER:
        target = HFTarget.from_pretrained(cfg.target, cfg.target_layer_ids, dtype=dtype, device=cfg.device)
        drafter = random_drafter(target, seed=cfg.seed, block_size=cfg.block_size)
    else:
        from dspark_sglang.drafter.checkpoint import read_checkpoint_config
        layer_ids = read_checkpoint_config(cfg.drafter).get("target_layer_ids")
        if not layer_ids:
            raise ValueError(f"drafter checkpoint {cfg.drafter} has no target_layer_ids in config.json")
        target = HFTarget.from_pretrained(cfg.target, layer_ids, dtype=dtype, device=cfg.device)
        drafter = load_drafter_for(cfg.drafter, target, dtype=dtype)
        if drafter.config.block_size != cfg.block_size:
            raise ValueError(f"--block-size {cfg.block_size} but the drafter checkpoint {cfg.drafter} was "
                             f"trained with block_size={drafter.config.block_size}; pass --block-size "
                             f"{drafter.config.block_size}")
    sts = read_temperatures(cfg.sts) if cfg.sts else None
    decoder = SpeculativeDecoder(target, drafter, threshold=cfg.threshold, sts_temperatures=sts)
    return decoder, AutoTokenizer.from_pretrained(cfg.target)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def evaluate_dataset(decoder: SpeculativeDecoder, prompts: Sequence[torch.Tensor], cfg: EvalConfig,
                     name: str = "") -> tuple[dict[str, Any], list[RequestResult]]:
    """Speculative decoding (and optionally HF generate) on `prompts`; returns (summary, results)."""
    gen = torch.Generator(device=decoder.target.device).manual_seed(cfg.seed)
    results: list[RequestResult] = []
    start = time.perf_counter()
    with tqdm(total=len(prompts), desc=f"dspark {name}", unit="req") as bar:
        for i in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[i:i + cfg.batch_size]
            n = len(chunk)
            sampling = SamplingBatch.from_lists([cfg.temperature] * n, [cfg.top_k] * n, [cfg.top_p] * n)
            results += decoder.generate(chunk, cfg.max_new_tokens, sampling, gen, batched=cfg.batch_size > 1)
            bar.update(n)
    spec_s = time.perf_counter() - start
    summary = summarize(results, decoder.block_size)
    summary["spec_seconds"] = spec_s
    summary["spec_tokens_per_s"] = summary["num_generated_tokens"] / spec_s
    if cfg.baseline:
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        ref = hf_generate(decoder.target, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p,
                          batch_size=cfg.batch_size)
        hf_s = time.perf_counter() - start
        summary["hf_generate_seconds"] = hf_s
        summary["hf_generate_tokens_per_s"] = sum(len(r) for r in ref) / hf_s
        if cfg.temperature == 0:
            same = [res.output_ids == r for res, r in zip(results, ref)]
            summary["greedy_match_rate"] = sum(same) / len(same)
            summary["greedy_first_divergence"] = [None if s else _common_prefix(res.output_ids, r)
                                                  for s, res, r in zip(same, results, ref)]
    return summary, results


def run_evaluation(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate every dataset of `cfg`; returns {"config": ..., "datasets": {name: summary}}."""
    if cfg.batch_size < 1 or cfg.num_samples < 1:
        raise ValueError(f"batch_size and num_samples must be >= 1; got {cfg.batch_size}, {cfg.num_samples}")
    texts = {Path(p).stem: load_first_turns(p, cfg.num_samples) for p in cfg.datasets}  # fail early on bad paths
    decoder, tokenizer = build_decoder(cfg)
    out: dict[str, Any] = {"config": asdict(cfg), "datasets": {}}
    for name, prompts in texts.items():
        ids = [encode_chat(tokenizer, t) for t in prompts]
        summary, _ = evaluate_dataset(decoder, ids, cfg, name)
        out["datasets"][name] = summary
    return out
