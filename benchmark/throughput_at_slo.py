"""Throughput at a per-user SLO: sweep client concurrency against SGLang servers and find, for each
tokens/s-per-user target, the highest aggregate throughput each configuration sustains.

For every configuration (default: no speculation, SGLang NGRAM, DSPARK `static`, DSPARK with the
scheduler `alg1`) the script starts a server on 127.0.0.1 (or attaches to one: --attach NAME=URL),
and for each concurrency c (default 1 2 4 8 16 32 64) keeps c streaming chat requests in flight over
a prompt set (one `{"turns": [...]}` per line, first turn) with a fixed output length (ignore_eos)
until --requests-per-level (at least c) are done or the level's time limit passes. Per request:
TTFT, decode tokens/s per user (excluding TTFT), accepted length. Per level: aggregate output tok/s,
p50/p90 per-user tok/s, mean verify budget per request (Δ of the server's dspark:* counters).

--rounds N (N > 1) measures every level N times with all servers up at once (each with
--sleep-on-idle, so an idle server does not spin on a core) and the configurations taking turns
level by level, their order rotated each round: slow drift of the host (other load, memory pressure,
thermals) then hits every configuration alike. A level's row is the median over its rounds, and the
scheduler's ratio is also given paired (alg1 / best reference within each round, median over rounds).

Writes <out-dir>/throughput_at_slo.{json,csv}, frontier.png (aggregate throughput vs tokens/s per
user, DSpark paper Fig. 7) and verify_budget.png (Fig. 8), and prints for every SLO anchor the best
throughput each configuration sustains while meeting it and its ratio to no speculation, plus the
scheduler's ratio to the better of no-spec and static at every concurrency (goal >= 0.98).

    python benchmark/throughput_at_slo.py --concurrency 1,2,4,8 --output-len 64 --num-prompts 32
    python benchmark/throughput_at_slo.py --attach no-spec=http://127.0.0.1:30000 --configs no-spec
    python benchmark/throughput_at_slo.py --concurrency 1,4,16 --rounds 3 --dtype bfloat16

Servers are always shut down (normal end, error, Ctrl-C, SIGTERM); clients only talk to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.common.chat_client import stream_chat  # noqa: E402
from benchmark.common.server_metrics import mean_verify_budget, scrape  # noqa: E402
from benchmark.common.servers import add_drafter_args, launch_flags, parse_attach, server_for, terminate_on_signals  # noqa: E402
from dspark_sglang.evaluation.datasets import load_first_turns  # noqa: E402
from benchmark.common.slo_analysis import (auto_anchors, combine_rounds, scheduler_vs_fixed,  # noqa: E402
                                           scheduler_vs_fixed_paired, slo_table, summarize_level)

DEFAULT_CONFIGS = "no-spec,ngram,dspark-static,dspark-alg1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", default=None, help="target HF folder (default: the packaged SmolLM2-135M)")
    add_drafter_args(p)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list (default {DEFAULT_CONFIGS})")
    p.add_argument("--attach", action="append", default=[], metavar="NAME=URL",
                   help="use a running server for configuration NAME instead of starting one")
    p.add_argument("--dataset", default=str(ROOT.parent / "shared" / "datasets" / "mt-bench.jsonl"))
    p.add_argument("--num-prompts", type=int, default=64, help="first N lines of --dataset, cycled")
    p.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every level this many times, configurations interleaved (all servers up)")
    p.add_argument("--requests-per-level", type=int, default=0,
                   help="requests per concurrency level (default: max(2c, 4))")
    p.add_argument("--output-len", type=int, default=128, help="fixed completion length (ignore_eos)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus of every request (1 = off)")
    p.add_argument("--level-time-limit-s", type=float, default=300.0,
                   help="stop issuing requests of a level after this; in-flight ones get --request-timeout-s")
    p.add_argument("--sweep-time-limit-s", type=float, default=1800.0,
                   help="skip a configuration's remaining levels after this")
    p.add_argument("--request-timeout-s", type=float, default=600.0)
    p.add_argument("--slo", default="auto", help="comma list of tokens/s-per-user anchors, or auto "
                   "(the per-user speeds no-spec reaches, so it just meets each)")
    p.add_argument("--slo-stat", default="per_user_tok_s_p50",
                   choices=("per_user_tok_s_p50", "per_user_tok_s_p10", "per_user_tok_s_mean"))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-total-tokens", type=int, default=32768)
    p.add_argument("--out-dir", default=str(ROOT / "benchmark" / "results" / "throughput_at_slo"))
    args = p.parse_args(argv)
    args.concurrency_levels = [int(c) for c in args.concurrency.split(",") if c]
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: at least 1")
    if not args.concurrency_levels or min(args.concurrency_levels) < 1:
        p.error(f"--concurrency {args.concurrency!r}: positive integers, e.g. 1,2,4,8")
    if args.slo != "auto":
        try:
            args.slo_anchors = [float(x) for x in args.slo.split(",") if x]
        except ValueError:
            p.error(f"--slo {args.slo!r}: a comma list of tokens/s per user (e.g. 5,8) or auto")
    try:
        args.attach_urls = parse_attach(args.attach)
    except ValueError as exc:
        p.error(str(exc))
    return args


def run_level(base: str, concurrency: int, args, prompt_iter) -> tuple[list, bool]:
    """Keep `concurrency` requests in flight until the level's count or time limit; results + timed_out."""
    total = args.requests_per_level or max(2 * concurrency, 4)
    total = max(total, concurrency)
    deadline = time.monotonic() + args.level_time_limit_s
    lock = threading.Lock()
    issued = [0]
    results = []

    def worker():
        while True:
            with lock:
                if issued[0] >= total or time.monotonic() > deadline:
                    return
                issued[0] += 1
                prompt = next(prompt_iter)
            res = stream_chat(base, [{"role": "user", "content": prompt}], args.output_len,
                              temperature=args.temperature, timeout_s=args.request_timeout_s, top_p=args.top_p)
            with lock:
                results.append(res)

    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    finally:        # Ctrl-C / SIGTERM: don't wait for in-flight streams; the server is stopped next
        pool.shutdown(wait=False, cancel_futures=True)
    return results, issued[0] < total


def warm_up(name: str, base: str, prompts: list[str], args) -> None:
    """One short request, and a warning when the sweep will reuse prompts."""
    stream_chat(base, [{"role": "user", "content": "Hello"}], 8, timeout_s=args.request_timeout_s)
    needed = args.rounds * sum(max(args.requests_per_level or max(2 * c, 4), c) for c in args.concurrency_levels)
    if needed > len(prompts):
        print(f"[{name}] warning: {needed} requests over {len(prompts)} prompts: prompts repeat across levels, "
              "which flatters caches (NGRAM's n-gram table, the radix cache); raise --num-prompts", flush=True)


def measure_level(name: str, base: str, conc: int, args, prompt_iter, round_index: int,
                  rows: list, requests: list) -> None:
    """One concurrency level of one configuration: a row (with its round) and the per-request records."""
    before = scrape(base)
    started = time.monotonic()
    results, timed_out = run_level(base, conc, args, prompt_iter)
    budget = mean_verify_budget(before, scrape(base))
    row = {**summarize_level(name, conc, results, budget, timed_out), "round": round_index,
           "level_s": time.monotonic() - started}
    rows.append(row)
    requests.extend({"config": name, "concurrency": conc, "round": round_index, **r.as_row(), "text": None}
                    for r in results)
    print(f"[{name}] {f'round {round_index} ' if args.rounds > 1 else ''}c={conc:3d}  agg "
          f"{row['aggregate_tok_s']:7.2f} tok/s  per-user p50 {row['per_user_tok_s_p50']:6.2f} p90 "
          f"{row['per_user_tok_s_p90']:6.2f}  τ {row['accept_length_mean'] or float('nan'):.2f}  budget "
          f"{budget if budget is not None else float('nan'):.2f}  failed {row['failed']}"
          f"{'  (level time limit)' if timed_out else ''}", flush=True)


def sweep(configs: list[str], bases: dict[str, str], prompts: list[str], args, rows: list, requests: list) -> None:
    """Every level of every configuration, `args.rounds` times; configurations take turns level by level
    (order rotated each round). A configuration whose levels used up --sweep-time-limit-s is dropped."""
    prompt_iters = {name: itertools.cycle(prompts) for name in configs}   # each configuration: same sequence
    spent = {name: 0.0 for name in configs}
    for round_index in range(args.rounds):
        shift = round_index % len(configs)
        order = configs[shift:] + configs[:shift]
        for conc in args.concurrency_levels:
            for name in order:
                if spent[name] > args.sweep_time_limit_s:
                    continue
                started = time.monotonic()
                measure_level(name, bases[name], conc, args, prompt_iters[name], round_index, rows, requests)
                spent[name] += time.monotonic() - started
                if spent[name] > args.sweep_time_limit_s:
                    print(f"[{name}] sweep time limit reached; its remaining levels are skipped", flush=True)


def run_all(configs: list[str], flags: dict[str, list[str]], prompts: list[str], args, out_dir: Path,
            rows: list, requests: list) -> None:
    """One round: one server at a time. Several rounds: every server up together, levels interleaved."""
    if args.rounds == 1:
        for name in configs:
            with server_for(name, flags, args, out_dir) as base:
                warm_up(name, base, prompts, args)
                sweep([name], {name: base}, prompts, args, rows, requests)
        return
    with contextlib.ExitStack() as stack:
        bases = {}
        for name in configs:
            bases[name] = stack.enter_context(server_for(name, flags, args, out_dir))
            warm_up(name, bases[name], prompts, args)
        sweep(configs, bases, prompts, args, rows, requests)


def write_outputs(rows: list, round_rows: list, requests: list, anchors: list, table: list, sched: list,
                  paired: list, out_dir: Path, args) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "throughput_at_slo.json", "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "attach_urls"}, "levels": rows,
                   "level_rounds": round_rows, "slo_anchors": anchors, "slo_table": table,
                   "scheduler_vs_fixed": sched, "scheduler_vs_fixed_paired": paired,
                   "requests": requests}, f, indent=1)
    if rows:
        with open(out_dir / "throughput_at_slo.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    from benchmark.common.plots import plot_frontier, plot_verify_budget
    plot_frontier(rows, out_dir / "frontier.png", stat=args.slo_stat, anchors=anchors)
    plot_verify_budget(rows, out_dir / "verify_budget.png")


def print_report(table: list, sched: list, paired: list, args) -> None:
    print(f"\nbest aggregate throughput meeting each SLO anchor ({args.slo_stat}):")
    for t in table:
        best = t["best_aggregate_tok_s"]
        ratio = f"{t['ratio_to_baseline']:.2f}x no-spec" if t["ratio_to_baseline"] else "-"
        where = f"(c={t['at_concurrency']})" if best else ""
        print(f"  anchor {t['anchor_tok_s_per_user']:6.2f} tok/s/user  {t['config']:>14}: "
              f"{best if best is None else round(best, 2)!s:>8} tok/s {where:7} {ratio}")
    if sched:
        print("\nscheduler vs the better of no-spec and static (goal >= 0.98 at every concurrency):")
        for s in sched:
            print(f"  c={s['concurrency']:3d}  {s['scheduled_tok_s']:7.2f} vs {s['best_reference']} "
                  f"{s['reference_tok_s']:7.2f}  = {s['ratio']:.3f}")
    if paired and args.rounds > 1:
        print("\nthe same, paired within each round (median and range of the per-round ratios):")
        for s in paired:
            print(f"  c={s['concurrency']:3d}  {s['ratio_median']:.3f}  [{s['ratio_min']:.3f}, {s['ratio_max']:.3f}]"
                  f"  over {s['rounds']} rounds")


def main(argv=None) -> int:
    args = parse_args(argv)
    prompts = load_first_turns(args.dataset, args.num_prompts)
    configs = [c for c in args.configs.split(",") if c]
    flags = launch_flags(configs, args)
    out_dir = Path(args.out_dir)
    round_rows, requests = [], []
    with terminate_on_signals():
        try:
            run_all(configs, flags, prompts, args, out_dir, round_rows, requests)
        except KeyboardInterrupt:
            print("interrupted: servers stopped; writing what was measured", file=sys.stderr)
        finally:
            rows = combine_rounds(round_rows)
            anchors = args.slo_anchors if args.slo != "auto" else auto_anchors(rows, stat=args.slo_stat)
            table = slo_table(rows, anchors, stat=args.slo_stat)
            sched = scheduler_vs_fixed(rows)
            paired = scheduler_vs_fixed_paired(round_rows)
            write_outputs(rows, round_rows, requests, anchors, table, sched, paired, out_dir, args)
    print_report(table, sched, paired, args)
    print(f"\nwrote {out_dir}/throughput_at_slo.json, .csv, frontier.png, verify_budget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
