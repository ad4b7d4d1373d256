"""Fit Sequential Temperature Scaling for a DSpark drafter and write `sts.json` next to it.

Labels are real acceptance outcomes of stochastic verification at the serving temperature, from
held-out prompts: the training preset's prompt list (free benchmark lines, stdlib code prompts, chat
prompts) minus every prompt of the training answers shard, taken from the end of the shuffle (never
generated). The rounds come from an SGLang server running the drafter with every slot verified
(`--backend sglang`, default) or from the offline batch-1 decoder (`--backend hf`, slow).

    python python/fit_sts.py --drafter dspark_sglang/assets/drafters/smollm2-135m-dspark \
        --exclude-shard .cache/train2/answers.jsonl --num-prompts 300 --max-new-tokens 64 --temperature 1.0
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
    p.add_argument("--exclude-shard", default=".cache/train2/answers.jsonl",
                   help="answers shard whose prompts were used for training (excluded)")
    p.add_argument("--preset", default="smollm2-default", help="training preset whose prompt list is drawn from")
    p.add_argument("--num-prompts", type=int, default=300)
    p.add_argument("--sources", nargs="+", default=None,
                   help="prompt sources to draw held-out prompts from (default: all)")
    p.add_argument("--backend", choices=("sglang", "hf"), default="sglang")
    p.add_argument("--work-dir", default=".cache/fit_sts", help="server log and rounds log (sglang backend)")
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

    from dspark_sglang.calibration.rounds import collect_rounds, collect_rounds_via_server
    from dspark_sglang.calibration.sts import STS_FILE, fit_sts, prefix_survival_ece
    from dspark_sglang.evaluation.datasets import encode_chat
    from dspark_sglang.evaluation.drafters import load_drafter_for
    from dspark_sglang.drafter.checkpoint import read_checkpoint_config
    from dspark_sglang.target import HFTarget
    from dspark_sglang.training.data import read_shard
    from dspark_sglang.training.presets import PRESETS
    from dspark_sglang.training.prompts import training_prompts

    if a.target is None:
        from dspark_sglang.models import smollm2_path
        a.target = str(smollm2_path())
    if not Path(a.exclude_shard).is_file():
        p.error(f"--exclude-shard {a.exclude_shard}: no such answers shard (the training run's answers.jsonl); "
                "without it held-out prompts cannot be told from training prompts")
    used = {r["uid"] for r in read_shard(a.exclude_shard)}
    preset = PRESETS[a.preset]
    held_out = [q for q in training_prompts(a.datasets_dir, preset.num_code, seed=a.seed, num_chat=preset.num_chat)
                if q.uid not in used and (a.sources is None or q.source in a.sources)]
    held_out = held_out[-a.num_prompts:]                     # the end of the shuffle: never generated
    tok = AutoTokenizer.from_pretrained(a.target)
    prompts = [encode_chat(tok, q.text) for q in held_out]
    if a.backend == "sglang":
        logits, accepts = collect_rounds_via_server(a.target, a.drafter, [x.tolist() for x in prompts],
                                                    a.max_new_tokens, a.temperature, a.work_dir)
    else:
        layer_ids = read_checkpoint_config(a.drafter)["target_layer_ids"]
        target = HFTarget.from_pretrained(a.target, layer_ids)
        drafter = load_drafter_for(a.drafter, target, dtype=torch.float32)
        logits, accepts = collect_rounds(target, drafter, prompts, a.max_new_tokens, a.temperature, seed=a.seed)
    temps = fit_sts(logits, accepts)
    gamma = logits.shape[1]
    report = {"temperatures": temps, "num_rounds": int(len(accepts)), "num_prompts": len(prompts),
              "serving_temperature": a.temperature, "backend": a.backend,
              "sources": sorted({q.source for q in held_out}),
              "ece_before": prefix_survival_ece(logits, accepts, [1.0] * gamma),
              "ece_after_in_sample": prefix_survival_ece(logits, accepts, temps),
              "prompt_uids": [q.uid for q in held_out]}
    out = Path(a.out or Path(a.drafter) / STS_FILE)
    out.write_text(json.dumps(temps) + "\n")
    out.with_name("sts_fit_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if a.rounds_out:
        np.savez(a.rounds_out, conf_logits=logits, accept_lens=accepts)
    print(json.dumps({k: v for k, v in report.items() if k != "prompt_uids"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
