"""Train a DSpark (or DFlash-ablation) drafter: prompts -> on-policy answers -> target feature cache
-> training. Every stage is resumable: rerun the same command after a kill.

All stages for one drafter:
    python python/train_drafter.py all --preset smollm2-v2 --work-dir .cache/train --out my-drafter

The shipped SmolLM2-135M drafter (a base run, then a long-context fine-tune, then STS) is reproduced by
`bash python/reproduce_default_drafter.sh`. For another target (`--target`), add `--target-layer-ids auto
--mask-token-id auto`.

Stages: `generate` (answers shard), `repo` (answers to long-context repository prompts, when the preset
or `--num-repo-prompts` asks for them), `features` (feature cache), `train` (drafter), `all`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from dspark_sglang.training.presets import PRESETS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=("generate", "repo", "features", "train", "all"))
    p.add_argument("--preset", choices=sorted(PRESETS), default="smollm2-default")
    p.add_argument("--datasets-dir", default="../shared/datasets", help="benchmark jsonl folder (free lines only)")
    p.add_argument("--work-dir", default=".cache/train", help="answers shard, feature cache, checkpoints, logs")
    p.add_argument("--out", default=None, help="final drafter folder (config.json + model.safetensors)")
    p.add_argument("--target", default=None, help="HF folder (default: the converted SmolLM2-135M-Instruct)")
    p.add_argument("--num-code", type=int, default=None, help="coding prompts from the stdlib")
    p.add_argument("--num-chat", type=int, default=None, help="template chat prompts")
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--num-repo-prompts", type=int, default=None,
                   help="long-context repository prompts (stdlib modules pasted as context; stage `repo`)")
    p.add_argument("--repo-exclude-sessions", default=str(Path(__file__).resolve().parents[1] / "benchmark" / "sessions"
                                                          / "coding_sessions.jsonl"),
                   help="evaluation sessions whose pasted modules repository prompts never use")
    p.add_argument("--gen-batch-size", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ablation", choices=("dspark", "dflash"), default="dspark",
                   help="dflash: markov_rank 0, no confidence head, CE weight 1.0")
    p.add_argument("--target-layer-ids", default=None,
                   help="target layers the drafter reads: 'auto' (spread over the target's depth, never the final "
                        "layer) or a comma list; default: the preset's (SmolLM2-135M: 1,10,19,27)")
    p.add_argument("--mask-token-id", default=None,
                   help="the block's mask token: 'auto' (the tokenizer's last special token that its chat template "
                        "does not use) or an id that never occurs in the data; default: the preset's (SmolLM2: 16)")
    p.add_argument("--markov-rank", type=int, default=None, help="Markov head rank (default: the preset's)")
    p.add_argument("--confidence-detached", action="store_true", default=None,
                   help="the confidence loss does not train the draft backbone (gradient stopped at h_k)")
    p.add_argument("--markov-rows", choices=("full", "draft_vocab"), default=None,
                   help="how the exported checkpoint stores the Markov head: full (DeepSpec, default) or draft_vocab "
                        "(rows of the draft vocabulary only; the shipped rank-128 SmolLM2 drafter, 10,603 ids: 25 -> 5.4 MB). Rerunning a finished "
                        "train command with it re-exports without training")
    p.add_argument("--draft-vocab-size", type=int, default=None,
                   help="export only the N most frequent answer tokens of the training vocabulary as the draft "
                        "vocabulary (a narrower draft lm_head; default: all of it). Rerunning a finished train "
                        "command with it re-exports without training")
    p.add_argument("--init-from", default=None,
                   help="exported drafter to fine-tune from (same preset / ablation); default: fresh weights")
    p.add_argument("--holdout", type=int, default=None,
                   help="last sequences of the feature cache kept out of training (default: the preset's)")
    p.add_argument("--long-seq-share", type=float, default=None,
                   help="draw each training sequence from the long (> 1024-token) ones with this probability")
    p.add_argument("--run-name", default=None, help="checkpoint/log subfolder (default: the ablation name)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget-min", type=float, default=None, help="stop training (and save) after this")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from dspark_sglang.training.pipeline import run_stage
    run_stage(args.stage, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
