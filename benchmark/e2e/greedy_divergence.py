"""Greedy outputs of a DSPARK server against a no-speculation server, text for text, in one run.

In float32 DSpark's greedy output equals plain decoding token for token (the e2e tests check it). In bf16 a
verify window and a decode row may round differently (other rows in the same call change a kernel's
work split, and near-tied logits then break the other way), so the README reports a divergence rate;
this script measures it: both servers are started one after the other (same dtype, seed and flags but
the speculation ones), every prompt is sent to each as a greedy chat completion, and the completions are
compared. Prints one JSON line per configuration pair with the identical count and, for each divergent
prompt, the first differing character offset.

    python benchmark/e2e/greedy_divergence.py --num-prompts 12 --max-new-tokens 96 --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmark.common.chat_client import stream_chat  # noqa: E402
from benchmark.common.servers import add_drafter_args, launch_flags, launched  # noqa: E402

DATASETS = ("humaneval.jsonl", "mt-bench.jsonl")


def first_difference(a: str, b: str) -> int | None:
    """Offset of the first differing character (None when a == b)."""
    if a == b:
        return None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def completions(model_path: str, flags: list[str], prompts: list[str], max_new_tokens: int, log: Path) -> list[str]:
    """Greedy completions of `prompts` (one at a time) from a server started with `flags`."""
    with launched(model_path, flags, log, nice=10) as base:
        texts = []
        for prompt in prompts:
            result = stream_chat(base, [{"role": "user", "content": prompt}], max_new_tokens, ignore_eos=False)
            if not result.ok:
                raise RuntimeError(f"request failed on {log.stem}: {result.error}")
            texts.append(result.text)
        return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default=None, help="target HF folder (default: the packaged SmolLM2-135M)")
    add_drafter_args(parser)
    parser.add_argument("--datasets-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--num-prompts", type=int, default=12, help="first turns per dataset (humaneval, mt-bench)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--configs", default="dspark-alg1", help="speculative configurations compared with no-spec")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmark" / "results" / "greedy_divergence"))
    args = parser.parse_args()

    from dspark_sglang.evaluation.datasets import load_first_turns

    prompts = [p for name in DATASETS for p in load_first_turns(Path(args.datasets_dir) / name, args.num_prompts)]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.configs.split(",") if n]
    args.attach_urls = {}                                   # every server is started here, one after the other
    flags = launch_flags(["no-spec", *names], args)         # (fills args.model_path when none was given)
    reference = completions(args.model_path, flags["no-spec"], prompts, args.max_new_tokens,
                            out_dir / "server_no-spec.log")
    for name in names:
        texts = completions(args.model_path, flags[name], prompts, args.max_new_tokens, out_dir / f"server_{name}.log")
        divergent = {i: first_difference(a, b) for i, (a, b) in enumerate(zip(reference, texts)) if a != b}
        row = {"config": name, "dtype": args.dtype, "prompts": len(prompts), "identical": len(prompts) - len(divergent),
               "divergent_prompts": {str(i): offset for i, offset in divergent.items()},
               "max_new_tokens": args.max_new_tokens}
        print(json.dumps(row), flush=True)
        (out_dir / f"{name}.json").write_text(json.dumps({"row": row, "reference": reference, "texts": texts}, indent=1))


if __name__ == "__main__":
    main()
