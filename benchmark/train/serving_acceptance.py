"""τ of drafters at scale through SGLang: the first N prompts (first turn) of each dataset, at each
temperature, served by `--speculative-algorithm DSPARK --dspark-policy static` (every draft verified,
the offline evaluator's protocol; prompt-lookup blocks off, so τ is the drafter's own) with many requests
in flight.

τ = 1 + Δ dspark:accepted_drafts_total / Δ dspark:request_steps_total over one (dataset, temperature)
run — mean committed tokens per target verify step, exactly the offline evaluator's τ definition, read
from the server's counters (continuous batching makes 100 prompts x 4 datasets x 2 temperatures
affordable on a CPU). The server also writes every request-round (`--dspark-rounds-log`), from which
each cell gets the per-position conditional acceptance and, for drafters with a confidence head, the
ECE of prefix survival before and after STS (the drafter folder's sts.json, or --sts NAME=PATH).
Rank-0 (DFlash) drafters are served too (static policy).

    python benchmark/train/serving_acceptance.py --drafter dspark=dspark_sglang/assets/drafters/smollm2-135m-dspark \
        --drafter dflash=.cache/dflash_ablation --num-prompts 100 --max-new-tokens 64 --out benchmark/train/serving_tau.json

Prints per dataset and temperature τ of each drafter and the gain of the first over the second
(macro average over datasets = the issue's DSpark-vs-DFlash figure); writes --out (JSON) and, next to
it, conditional_acceptance.png.
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
from dspark_sglang.calibration.sts import STS_FILE  # noqa: E402
from dspark_sglang.evaluation.datasets import load_first_turns  # noqa: E402
from dspark_sglang.serving.rounds_log import Rounds, count_lines, read_rounds  # noqa: E402

DATASETS = ("gsm8k", "humaneval", "mbpp", "mt-bench")
MIN_ROUNDS = 30
"""Fewest rounds reaching a position for its conditional acceptance to be plotted."""


def tau_between(before: dict, after: dict) -> tuple[float, int]:
    steps = after.get("dspark:request_steps_total", 0.0) - before.get("dspark:request_steps_total", 0.0)
    acc = after.get("dspark:accepted_drafts_total", 0.0) - before.get("dspark:accepted_drafts_total", 0.0)
    return (1.0 + acc / steps if steps else float("nan")), int(steps)


def analyse_rounds(rounds: Rounds, gamma: int, sts_temperatures=None) -> dict:
    """Round statistics of one cell: τ, conditional acceptance per position and, with confidence logits,
    the ECE of prefix survival (slots of fully verified rounds) at T_sts = 1 and at the STS temperatures."""
    import numpy as np

    from dspark_sglang.calibration.sts import prefix_survival_ece
    from dspark_sglang.evaluation.metrics import conditional_acceptance, rounds_reaching

    out = {"rounds": int(rounds.accepted.size),
           "tau_rounds": float(1.0 + rounds.accepted.mean()) if rounds.accepted.size else float("nan"),
           "conditional_acceptance": [None if np.isnan(x) else float(x) for x in
                                      conditional_acceptance(rounds.accepted, rounds.verified, gamma)],
           "conditional_acceptance_rounds": rounds_reaching(rounds.accepted, rounds.verified, gamma).tolist()}
    full = rounds.verified == gamma
    if rounds.conf is not None and full.any():
        conf, acc = rounds.conf[full], rounds.accepted[full]
        out["ece_before_sts"] = prefix_survival_ece(conf, acc, [1.0] * gamma)
        if sts_temperatures is not None:
            out["ece_after_sts"] = prefix_survival_ece(conf, acc, sts_temperatures)
    return out


def _sts_temperatures(path: str | None):
    from dspark_sglang.calibration.sts import read_temperatures

    return read_temperatures(path) if path is not None and Path(path).is_file() else None


def run(args) -> dict:
    from dspark_sglang.models import smollm2_path
    model = args.model_path or str(smollm2_path())
    prompts = {d: load_first_turns(Path(args.datasets_dir) / f"{d}.jsonl", args.num_prompts) for d in args.datasets}
    results: dict = {}
    out_dir = Path(args.out).parent
    for name, path in args.drafters:
        gamma = json.loads((Path(path) / "config.json").read_text())["block_size"]
        sts = _sts_temperatures(args.sts.get(name, str(Path(path) / STS_FILE)))
        rounds_path = out_dir / f"serving_acceptance_{name}.rounds.jsonl"
        rounds_path.unlink(missing_ok=True)
        flags = ["--dtype", args.dtype, "--enable-metrics", "--speculative-algorithm", "DSPARK",
                 "--speculative-draft-model-path", path, "--dspark-policy", "static",
                 "--dspark-prompt-lookup", "off",                      # the drafter's own blocks only
                 "--max-running-requests", str(args.concurrency), "--dspark-rounds-log", str(rounds_path)]
        with launched(model, flags, out_dir / f"serving_acceptance_{name}.log") as base:
            for temp in args.temperatures:
                for dataset, items in prompts.items():
                    before = scrape(base)
                    first_line = count_lines(str(rounds_path))
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
                    last_line = count_lines(str(rounds_path))
                    cell = analyse_rounds(read_rounds(str(rounds_path), first_line, last_line), gamma, sts)
                    results.setdefault(name, {}).setdefault(str(temp), {})[dataset] = {
                        "tau": tau, "request_steps": steps, "requests": len(res), "failed": failed,
                        "tokens": sum(r.completion_tokens for r in res), "seconds": time.perf_counter() - start,
                        "rounds_log": str(rounds_path), "rounds_lines": [first_line, last_line], **cell}
                    ece = "".join(f", {k} {100 * cell[k]:.2f} %" for k in ("ece_before_sts", "ece_after_sts")
                                  if k in cell)
                    print(f"{name:>8} T={temp:g} {dataset:>10}: τ {tau:.3f} over {steps} request-steps "
                          f"({len(res)} prompts, {failed} failed, {time.perf_counter() - start:.0f} s{ece})",
                          flush=True)
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
    for name in names:
        for temp in map(str, temperatures):
            cells = {d: results[name][temp][d] for d in datasets}
            if all("ece_before_sts" in c for c in cells.values()):
                lines.append(f"{name} T={temp} ECE of prefix survival before → after STS: " + ", ".join(
                    f"{d} {100 * c['ece_before_sts']:.2f} → "
                    + (f"{100 * c['ece_after_sts']:.2f} %" if "ece_after_sts" in c else "n/a")
                    for d, c in cells.items()))
    return lines


def plot_conditional_acceptance(results: dict, path: Path) -> None:
    """One panel per temperature: per-position conditional acceptance, one colour per dataset, one line
    style per drafter (DSpark §5: flat for DSpark, decaying for DFlash). Positions reached by fewer than
    MIN_ROUNDS rounds are left out (too few to estimate)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = sorted({t for per_name in results.values() for t in per_name}, key=float)
    styles = ["-o", "--s", ":^", "-.v"]
    fig, axes = plt.subplots(1, len(temps), figsize=(6 * len(temps), 4.2), squeeze=False)
    for ax, temp in zip(axes[0], temps):
        for style, (name, per_temp) in zip(styles, results.items()):
            for colour, (dataset, cell) in enumerate(per_temp.get(temp, {}).items()):
                counts = cell.get("conditional_acceptance_rounds", [MIN_ROUNDS] * len(cell["conditional_acceptance"]))
                ca = [float("nan") if x is None or n < MIN_ROUNDS else x
                      for x, n in zip(cell["conditional_acceptance"], counts)]
                ax.plot(range(1, len(ca) + 1), ca, style, color=f"C{colour}", label=f"{name} {dataset}")
        ax.set_title(f"T = {temp} (positions reached by ≥ {MIN_ROUNDS} rounds)")
        ax.set_xlabel("draft position k")
        ax.set_ylabel("P(accept k | 1..k-1 accepted)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    p.add_argument("--sts", action="append", default=[], metavar="NAME=PATH",
                   help="STS temperatures JSON for a drafter (default: its folder's sts.json when present)")
    p.add_argument("--out", default=str(ROOT / "benchmark" / "results" / "serving_tau.json"))
    args = p.parse_args(argv)
    args.drafters = []
    for d in args.drafter:
        name, sep, path = d.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"--drafter {d!r}: expected NAME=PATH to a drafter folder")
        args.drafters.append((name, path))
    args.sts = dict(item.partition("=")[::2] for item in args.sts)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with terminate_on_signals():
        results = run(args)
    lines = report(results, args.temperatures, args.datasets)
    print("\n".join(lines))
    with open(args.out, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results, "table": lines}, f, indent=1)
    plot = Path(args.out).parent / "conditional_acceptance.png"
    plot_conditional_acceptance(results, plot)
    print(f"wrote {args.out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
