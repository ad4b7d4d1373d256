"""The offline evaluator (dspark_sglang.evaluation) on the benchmark prompts, also keeping every round,
so that the ECE of prefix survival can be reported before AND after STS from the same rounds.

    python benchmark/train/eval_rounds.py --drafter DIR --temperature 1 --num-samples 10 \
        --max-new-tokens 64 [--sts DIR/sts.json] --out benchmark/train/eval_dspark_t1.json

Writes {"config", "datasets": {name: evaluator summary (+ ece_before_sts / ece_after_sts)}} and a
sibling *.rounds.json with (confidence, accept_len, verify_len) per round.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DATASETS = ("gsm8k", "humaneval", "mbpp", "mt-bench")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--drafter", required=True)
    p.add_argument("--temperature", type=float, required=True)
    p.add_argument("--num-samples", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sts", default=None)
    p.add_argument("--datasets-dir", default="../shared/datasets")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    from dspark_sglang.calibration.sts import prefix_survival_ece
    from dspark_sglang.drafter.checkpoint import read_checkpoint_config
    from dspark_sglang.evaluation.datasets import encode_chat, load_first_turns
    from dspark_sglang.calibration.sts import read_temperatures
    from dspark_sglang.evaluation.runner import EvalConfig, build_decoder, evaluate_dataset
    from dspark_sglang.models import smollm2_path

    files = [str(Path(a.datasets_dir) / f"{d}.jsonl") for d in DATASETS]
    block = read_checkpoint_config(a.drafter)["block_size"]
    cfg = EvalConfig(datasets=files, target=str(smollm2_path()), drafter=a.drafter, num_samples=a.num_samples,
                     max_new_tokens=a.max_new_tokens, temperature=a.temperature, block_size=block, sts=a.sts,
                     baseline=False)
    decoder, tok = build_decoder(cfg)
    temps = read_temperatures(a.sts) if a.sts else [1.0] * block
    out = {"config": vars(a), "datasets": {}}
    rounds_out = {}
    for name, path in zip(DATASETS, files):
        ids = [encode_chat(tok, t) for t in load_first_turns(path, a.num_samples)]
        summary, results = evaluate_dataset(decoder, ids, cfg, name)
        rounds = [(r.confidence, r.accept_len, r.verify_len) for res in results for r in res.rounds]
        rounds_out[name] = rounds
        if rounds and rounds[0][0] is not None:
            c = np.clip(np.array([r[0] for r in rounds]), 1e-6, 1 - 1e-6)
            z = (np.log(c) - np.log1p(-c)) * np.array(temps)[None, :]          # undo STS: raw logits
            acc = np.array([r[1] for r in rounds])
            summary["ece_before_sts"] = prefix_survival_ece(z, acc, [1.0] * block)
            summary["ece_after_sts"] = prefix_survival_ece(z, acc, temps) if a.sts else None
        out["datasets"][name] = summary
        Path(a.out).write_text(json.dumps(out, indent=2))
        print(name, json.dumps({k: summary.get(k) for k in ("tau", "num_rounds", "ece_before_sts",
                                                            "ece_after_sts", "auc")}), flush=True)
    Path(a.out).with_suffix(".rounds.json").write_text(json.dumps(rounds_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
