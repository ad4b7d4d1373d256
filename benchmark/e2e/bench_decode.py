"""Single-stream decode speed of SGLang servers on CPU: DSPARK (scheduled and static), no speculation and
SGLang's NGRAM, on HumanEval and MT-Bench first turns, in one run; prints one JSON line per
(configuration, dataset) and the ratios to no speculation.

Each configuration starts `python -m sglang.launch_server` on 127.0.0.1 (niced), sends the prompts one at
a time as chat completions (greedy unless --temperature), measures decode tok/s = completion tokens /
(end-to-end time − time to first token) per request from a stream, then stops the server.

    python benchmark/e2e/bench_decode.py --model-path ~/.cache/dspark_sglang/smollm2-135m-instruct-f32 \
        --drafter dspark_sglang/assets/drafters/smollm2-135m-dspark --num-prompts 5 --max-new-tokens 128

A random-weight drafter gives τ≈1 (DSPARK then only adds cost); use a trained one for real numbers.
Raw results: --out (default benchmark/results/bench_decode.jsonl, git-ignored).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmark.common.chat_client import stream_chat  # noqa: E402
from benchmark.common.servers import add_drafter_args, config_flags, drafter_for, launched  # noqa: E402
DATASETS = {"humaneval": "humaneval.jsonl", "mt-bench": "mt-bench.jsonl"}


def configurations(args) -> dict[str, list[str]]:
    """Launch flags of every name in --configs (`benchmark.common.servers.config_flags`); a bad name exits."""
    try:
        return {name: config_flags(name, drafter=drafter_for(name, args), dtype=args.dtype)
                for name in args.configs.split(",") if name}
    except ValueError as exc:
        raise SystemExit(f"--configs: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    add_drafter_args(parser)
    parser.add_argument("--datasets-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--num-prompts", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus of every request (1 = off)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--configs", default="no-spec,dspark-alg1,dspark-static,ngram")
    parser.add_argument("--out", default=str(ROOT / "benchmark" / "results" / "bench_decode.jsonl"))
    args = parser.parse_args()

    from dspark_sglang.evaluation.datasets import load_first_turns

    prompts = {name: load_first_turns(Path(args.datasets_dir) / f, args.num_prompts) for name, f in DATASETS.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    all_configs = configurations(args)
    results: dict[tuple[str, str], float] = {}
    for name in all_configs:
        log = out.parent / f"bench_decode_{name}.log"
        with launched(args.model_path, all_configs[name], log, nice=10) as base:
            stream_chat(base, [{"role": "user", "content": "Hello"}], 8)            # warm-up
            for dataset, items in prompts.items():
                runs = [stream_chat(base, [{"role": "user", "content": p}], args.max_new_tokens,
                                    temperature=args.temperature, ignore_eos=False, top_p=args.top_p)
                    for p in items]
                failed = [r.error for r in runs if not r.ok]
                if failed:
                    raise RuntimeError(f"{name} / {dataset}: {len(failed)} requests failed, first: {failed[0]}")
                tokens = sum(r.completion_tokens for r in runs)
                decode_s = sum(r.decode_s for r in runs)
                row = {"config": name, "dataset": dataset, "num_prompts": len(items), "tokens": tokens,
                       "decode_tok_s": tokens / decode_s if decode_s else 0.0,
                       "mean_ttft_s": sum(r.ttft_s for r in runs) / len(runs), "dtype": args.dtype,
                       "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                       "top_p": args.top_p}
                if name.startswith("dspark"):
                    with contextlib.suppress(Exception):
                        row["log_tail"] = [ln for ln in log.read_text().splitlines() if "dspark τ" in ln][-1][-160:]
                results[(name, dataset)] = row["decode_tok_s"]
                print(json.dumps(row), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    for (name, dataset), tok_s in results.items():
        base_tok_s = results.get(("no-spec", dataset))
        if base_tok_s:
            print(f"{name:>14} {dataset:>10}: {tok_s:7.2f} tok/s  = {tok_s / base_tok_s:.2f}x no-spec")


if __name__ == "__main__":
    main()
