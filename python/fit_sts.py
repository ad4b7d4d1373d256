"""Fit Sequential Temperature Scaling for a DSpark drafter and write `sts.json` next to it.

Labels are real acceptance outcomes of stochastic verification at the serving temperature, from
held-out prompts (never the evaluated benchmark lines; default: free gsm8k lines after the training
answers' prompts, plus unused stdlib coding prompts).

    python python/fit_sts.py --drafter dspark_sglang/assets/drafters/smollm2-135m-dspark \
        --datasets-dir ../shared/datasets --num-prompts 12 --max-new-tokens 64 --temperature 1.0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--drafter", required=True, help="DeepSpec checkpoint folder (sts.json is written here)")
    p.add_argument("--target", default=None, help="HF folder (default: the converted SmolLM2-135M-Instruct)")
    p.add_argument("--datasets-dir", default="../shared/datasets")
    p.add_argument("--exclude-shard", default=".cache/train/answers.jsonl",
                   help="answers shard whose prompts were used for training (excluded)")
    p.add_argument("--num-prompts", type=int, default=12)
    p.add_argument("--sources", nargs="+", default=["gsm8k", "aime24", "code-explain", "code-fix"],
                   help="prompt sources to draw held-out prompts from")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="the serving temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="default: <drafter>/sts.json")
    p.add_argument("--rounds-out", default=None, help="also save the raw rounds (npz)")
    a = p.parse_args(argv)
    import numpy as np
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    from dspark_sglang.calibration.rounds import collect_rounds
    from dspark_sglang.calibration.sts import fit_sts, prefix_survival_ece
    from dspark_sglang.evaluation.datasets import encode_chat
    from dspark_sglang.evaluation.drafters import load_drafter_for
    from dspark_sglang.drafter.checkpoint import read_checkpoint_config
    from dspark_sglang.target import HFTarget
    from dspark_sglang.training.data import read_shard
    from dspark_sglang.training.prompts import training_prompts

    if a.target is None:
        from dspark_sglang.models import smollm2_path
        a.target = str(smollm2_path())
    used = {r["uid"] for r in read_shard(a.exclude_shard)}
    held_out = [q for q in training_prompts(a.datasets_dir, 600, seed=a.seed)
                if q.uid not in used and q.source in a.sources]
    held_out = held_out[-a.num_prompts:]                     # the end of the shuffle: never generated
    layer_ids = read_checkpoint_config(a.drafter)["target_layer_ids"]
    target = HFTarget.from_pretrained(a.target, layer_ids)
    drafter = load_drafter_for(a.drafter, target, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.target)
    prompts = [encode_chat(tok, q.text) for q in held_out]
    logits, accepts = collect_rounds(target, drafter, prompts, a.max_new_tokens, a.temperature, seed=a.seed)
    temps = fit_sts(logits, accepts)
    gamma = logits.shape[1]
    report = {"temperatures": temps, "num_rounds": int(len(accepts)), "num_prompts": len(prompts),
              "serving_temperature": a.temperature,
              "ece_before": prefix_survival_ece(logits, accepts, [1.0] * gamma),
              "ece_after_in_sample": prefix_survival_ece(logits, accepts, temps),
              "prompt_uids": [q.uid for q in held_out]}
    out = Path(a.out or Path(a.drafter) / "sts.json")
    out.write_text(json.dumps(temps) + "\n")
    out.with_name("sts_fit_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if a.rounds_out:
        np.savez(a.rounds_out, conf_logits=logits, accept_lens=accepts)
    print(json.dumps({k: v for k, v in report.items() if k != "prompt_uids"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
