"""Offline DSpark acceptance evaluation: τ, acceptance@k, conditional acceptance, verify rate, confidence
AUC / ECE and tokens/s against plain HF generate, per dataset.

Example (random drafter on the converted SmolLM2, the paper's batch-1 protocol):
    python python/eval_acceptance.py --datasets ../shared/datasets/gsm8k.jsonl --num-samples 5 \
        --max-new-tokens 64 --temperature 0 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys

from dspark_sglang.evaluation import EvalConfig, format_table, run_evaluation
from dspark_sglang.evaluation.runner import DTYPES, RANDOM_DRAFTER


def parse_args(argv: list[str] | None = None) -> tuple[EvalConfig, str | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", required=True, help="jsonl files of {\"turns\": [...]}")
    p.add_argument("--num-samples", type=int, default=10, help="first N lines of each file (first turn)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (paper: 1.0)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--block-size", type=int, default=7, help="γ (must match a checkpoint's block_size)")
    p.add_argument("--drafter", default=RANDOM_DRAFTER, help="DeepSpec checkpoint folder, or 'random'")
    p.add_argument("--target-layer-ids", type=int, nargs="+", default=[1, 15, 28],
                   help="layers a random drafter reads (a checkpoint brings its own)")
    p.add_argument("--target", default=None, help="HF folder (default: the converted SmolLM2-135M-Instruct)")
    p.add_argument("--threshold", type=float, default=None, help="static confidence threshold for verify_len")
    p.add_argument("--sts", default=None, help="JSON file with γ STS temperatures")
    p.add_argument("--batch-size", type=int, default=1, help="1 = the paper's batch-1 protocol")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true", help="skip timing plain HF generate")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 avoids OpenMP thrashing on a shared, loaded machine)")
    p.add_argument("--json", default=None, help="write the full results here")
    a = p.parse_args(argv)
    if a.threads is not None:
        import torch
        torch.set_num_threads(a.threads)
    if a.target is None:
        from dspark_sglang.models import smollm2_path
        a.target = str(smollm2_path())
    return EvalConfig(datasets=a.datasets, target=a.target, drafter=a.drafter, num_samples=a.num_samples,
                      max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                      block_size=a.block_size, target_layer_ids=a.target_layer_ids, threshold=a.threshold,
                      sts=a.sts, batch_size=a.batch_size, dtype=a.dtype, seed=a.seed, baseline=not a.no_baseline,
                      device=a.device), a.json


def main(argv: list[str] | None = None) -> int:
    cfg, json_path = parse_args(argv)
    out = run_evaluation(cfg)
    for name, summary in out["datasets"].items():
        print(format_table(name, summary))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
