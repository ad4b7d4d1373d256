"""τ of drafters at scale through SGLang: the first N prompts (first turn) of each dataset, at each
temperature, served by `--speculative-algorithm DSPARK --dspark-policy static` (every draft verified,
the offline evaluator's protocol) with many requests in flight.

τ = 1 + Δ dspark:accepted_drafts_total / Δ dspark:request_steps_total over one (dataset, temperature)
run — mean committed tokens per target verify step, exactly the offline evaluator's τ definition, read
from the server's counters (continuous batching makes 100 prompts x 4 datasets x 2 temperatures
affordable on a CPU; the offline evaluator keeps per-round records for the calibration figures).

    python benchmark/train/serving_acceptance.py --drafter dspark=dspark_sglang/assets/drafters/smollm2-135m-dspark \
        --drafter dflash=.cache/dflash_ablation --num-prompts 100 --max-new-tokens 64 --out benchmark/train/serving_tau.json

Prints per dataset and temperature τ of each drafter and the gain of the first over the second
(macro average over datasets = the issue's DSpark-vs-DFlash figure).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmark.common.chat_client import stream_chat  # noqa: E402
from benchmark.common.server_metrics import scrape  # noqa: E402
from benchmark.common.servers import launched, terminate_on_signals  # noqa: E402
from dspark_sglang.evaluation.datasets import load_first_turns  # noqa: E402

DATASETS = ("gsm8k", "humaneval", "mbpp", "mt-bench")


def tau_between(before: dict, after: dict) -> tuple[float, int]:
    steps = after.get("dspark:request_steps_total", 0.0) - before.get("dspark:request_steps_total", 0.0)
    acc = after.get("dspark:accepted_drafts_total", 0.0) - before.get("dspark:accepted_drafts_total", 0.0)
    return (1.0 + acc / steps if steps else float("nan")), int(steps)


def run(args) -> dict:
    from dspark_sglang.models import smollm2_path
    model = args.model_path or str(smollm2_path())
    prompts = {d: load_first_turns(Path(args.datasets_dir) / f"{d}.jsonl", args.num_prompts) for d in args.datasets}
    results: dict = {}
    out_dir = Path(args.out).parent
    for name, path in args.drafters:
        flags = ["--dtype", args.dtype, "--enable-metrics", "--speculative-algorithm", "DSPARK",
                 "--speculative-draft-model-path", path, "--dspark-policy", "static",
                 "--max-running-requests", str(args.concurrency)]
        with launched(model, flags, out_dir / f"serving_acceptance_{name}.log") as base:
            for temp in args.temperatures:
                for dataset, items in prompts.items():
                    before = scrape(base)
                    start = time.perf_counter()
                    pool = ThreadPoolExecutor(args.concurrency)
                    try:
                        res = list(pool.map(lambda p: stream_chat(base, [{"role": "user", "content": p}],
                                                                  args.max_new_tokens, temperature=temp,
                                                                  ignore_eos=False), items))
                    finally:    # Ctrl-C / SIGTERM: don't wait for in-flight streams
                        pool.shutdown(wait=False, cancel_futures=True)
                    tau, steps = tau_between(before, scrape(base))
                    failed = sum(not r.ok for r in res)
                    results.setdefault(name, {}).setdefault(str(temp), {})[dataset] = {
                        "tau": tau, "request_steps": steps, "requests": len(res), "failed": failed,
                        "tokens": sum(r.completion_tokens for r in res), "seconds": time.perf_counter() - start}
                    print(f"{name:>8} T={temp:g} {dataset:>10}: τ {tau:.3f} over {steps} request-steps "
                          f"({len(res)} prompts, {failed} failed, {time.perf_counter() - start:.0f} s)", flush=True)
    return results


def report(results: dict, temperatures, datasets) -> list[str]:
    names = list(results)
    lines = []
    if len(names) < 2:
        return lines
    a, b = names[0], names[1]
    for temp in map(str, temperatures):
        gains = []
        lines.append(f"| dataset | T | {a} τ | {b} τ | gain |")
        lines.append("|---|---|---|---|---|")
        for d in datasets:
            ta, tb = results[a][temp][d]["tau"], results[b][temp][d]["tau"]
            gains.append(ta / tb - 1)
            lines.append(f"| {d} | {temp} | {ta:.3f} | {tb:.3f} | {100 * (ta / tb - 1):+.1f} % |")
        macro_a = sum(results[a][temp][d]["tau"] for d in datasets) / len(datasets)
        macro_b = sum(results[b][temp][d]["tau"] for d in datasets) / len(datasets)
        lines.append(f"| **macro** | {temp} | {macro_a:.3f} | {macro_b:.3f} | **{100 * (macro_a / macro_b - 1):+.1f} %** |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drafter", action="append", required=True, metavar="NAME=PATH",
                   help="drafters to compare (the first one's gain over the second is reported)")
    p.add_argument("--model-path", default=None)
    p.add_argument("--datasets-dir", default=str(ROOT.parent / "shared" / "datasets"))
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default=str(ROOT / "benchmark" / "results" / "serving_tau.json"))
    args = p.parse_args(argv)
    args.drafters = []
    for d in args.drafter:
        name, sep, path = d.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"--drafter {d!r}: expected NAME=PATH to a drafter folder")
        args.drafters.append((name, path))
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with terminate_on_signals():
        results = run(args)
    lines = report(results, args.temperatures, args.datasets)
    print("\n".join(lines))
    with open(args.out, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results, "table": lines}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
