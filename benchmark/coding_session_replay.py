"""Replay multi-turn coding sessions through the OpenAI chat API of SGLang servers and compare
configurations turn by turn: context length, TTFT, decode tokens/s, accepted length.

Sessions: JSONL in the schema of `benchmark/sessions/build_coding_sessions.py` (default: the shipped
`benchmark/sessions/coding_sessions.jsonl`, 24 sessions whose context passes 4k tokens by the last
turn). Turn 1 carries the system prompt and the repository files; every later turn is appended to the
history together with the model's OWN previous answers, as a user's IDE would. Greedy by default, so
lossless configurations see identical histories.

Writes <out-dir>/coding_session_replay.{json,csv} and replay.png (tokens/s and accepted length vs
context length), and prints per configuration: mean decode tok/s, accepted length per turn index, the
acceptance decay with context (least-squares slope per 1k context tokens) and how many of its answers are
text-identical to the first configuration's (`answer_sha`). In float32 greedy, lossless configurations
answer identically and their turns compare like for like; in bfloat16 a verify window's numerics may flip
a near-tie, the answers drift apart and so do the later turns' contexts — compare per-turn numbers only
where the answers match.

    python benchmark/coding_session_replay.py --max-sessions 4 --max-new-tokens 128
    python benchmark/coding_session_replay.py --attach dspark-alg1=http://127.0.0.1:30000 --configs dspark-alg1

`--interleave` keeps every configuration's server up and replays each session on all of them before the
next session (the order rotating per session), so a host whose speed drifts over the run (a shared CPU
host: ±20 % within minutes) slows every configuration alike instead of whichever ran last.

Servers are always shut down (normal end, error, Ctrl-C, SIGTERM); clients only talk to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.common.chat_client import stream_chat  # noqa: E402
from benchmark.common.sessions import load_sessions, turn_message  # noqa: E402
from benchmark.common.servers import add_drafter_args, launch_flags, parse_attach, server_for, terminate_on_signals  # noqa: E402

DEFAULT_CONFIGS = "no-spec,dspark-static,dspark-alg1"
DEFAULT_SESSIONS = ROOT / "benchmark" / "sessions" / "coding_sessions.jsonl"


def replay_session(base: str, config: str, session: dict, args) -> list[dict]:
    messages = [{"role": "system", "content": session["system"]}] if session.get("system") else []
    rows = []
    deadline = time.monotonic() + args.session_time_limit_s
    for i in range(len(session["turns"])):
        if time.monotonic() > deadline:
            print(f"[{config}] {session['id']}: session time limit, skipping turns >= {i + 1}", flush=True)
            break
        messages.append({"role": "user", "content": turn_message(session, i)})
        res = stream_chat(base, messages, args.max_new_tokens, temperature=args.temperature,
                          timeout_s=args.request_timeout_s, ignore_eos=False, top_p=args.top_p)
        rows.append({"config": config, "session": session["id"], "turn": i + 1, "ok": res.ok, "error": res.error,
                     "context_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                     "ttft_s": res.ttft_s, "decode_tok_s": res.decode_tok_s, "accept_length": res.accept_length,
                     "answer_sha": hashlib.sha1(res.text.encode()).hexdigest()[:12]})
        r = rows[-1]
        print(f"[{config}] {session['id']} turn {i + 1}: ctx {r['context_tokens']:5d}  out {r['completion_tokens']:4d}"
              f"  ttft {r['ttft_s']:6.2f}s  {r['decode_tok_s']:6.2f} tok/s  τ "
              f"{r['accept_length'] if r['accept_length'] is not None else float('nan'):.2f}"
              f"{'  ERROR ' + res.error if not res.ok else ''}", flush=True)
        if not res.ok:
            break
        messages.append({"role": "assistant", "content": res.text})
    return rows


def slope_per_1k(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys on xs, per 1,000 units of x (None with < 2 distinct x)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 1000.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else None


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per configuration: mean decode tok/s, per-turn means, accept-length decay with context."""
    out = {}
    by_config = defaultdict(list)
    for r in rows:
        if r["ok"] and r["completion_tokens"] > 1:
            by_config[r["config"]].append(r)
    for config, rs in by_config.items():
        per_turn = defaultdict(list)
        for r in rs:
            per_turn[r["turn"]].append(r)
        acc = [r for r in rs if r["accept_length"] is not None]
        out[config] = {
            "turns": len(rs),
            "decode_tok_s_mean": sum(r["decode_tok_s"] for r in rs) / len(rs),
            "per_turn": {t: {"context_tokens": sum(r["context_tokens"] for r in v) / len(v),
                             "decode_tok_s": sum(r["decode_tok_s"] for r in v) / len(v),
                             "accept_length": (sum(r["accept_length"] for r in v if r["accept_length"] is not None)
                                               / max(1, sum(r["accept_length"] is not None for r in v)))
                             if any(r["accept_length"] is not None for r in v) else None}
                         for t, v in sorted(per_turn.items())},
            "accept_length_slope_per_1k_ctx": slope_per_1k([r["context_tokens"] for r in acc],
                                                           [r["accept_length"] for r in acc]),
            "decode_tok_s_slope_per_1k_ctx": slope_per_1k([r["context_tokens"] for r in rs],
                                                          [r["decode_tok_s"] for r in rs]),
        }
    return out


def same_answers(rows: list[dict], reference: str) -> dict[str, tuple[int, int]]:
    """Per configuration: (turns whose answer is text-identical to `reference`'s same session and turn,
    turns both answered).

    Example:
        >>> rows = [{"config": c, "session": "s", "turn": t, "ok": True, "answer_sha": h}
        ...         for c, t, h in (("a", 1, "x"), ("a", 2, "y"), ("b", 1, "x"), ("b", 2, "z"))]
        >>> same_answers(rows, "a")
        {'a': (2, 2), 'b': (1, 2)}
    """
    ref = {(r["session"], r["turn"]): r["answer_sha"] for r in rows if r["config"] == reference and r["ok"]}
    out: dict[str, list[int]] = {}
    for r in rows:
        key = (r["session"], r["turn"])
        if r["ok"] and key in ref:
            counts = out.setdefault(r["config"], [0, 0])
            counts[0] += r["answer_sha"] == ref[key]
            counts[1] += 1
    return {config: (same, total) for config, (same, total) in out.items()}


def paired_ratios(rows: list[dict], reference: str) -> dict[str, dict]:
    """Per configuration other than `reference`: decode tok/s over `reference`'s on the same session and turn,
    over the turns whose answers are text-identical (same context and output: only the speed differs) —
    their count, median and geometric mean. In float32 greedy every lossless configuration qualifies on every
    turn; run with --interleave so that each pair ran minutes apart, not a whole sweep.

    Example:
        >>> rows = [{"config": c, "session": "s", "turn": t, "ok": True, "answer_sha": h, "decode_tok_s": v}
        ...         for c, t, h, v in (("a", 1, "x", 10.0), ("a", 2, "y", 20.0), ("b", 1, "x", 12.0),
        ...                            ("b", 2, "z", 5.0))]
        >>> paired_ratios(rows, "a")
        {'b': {'turns': 1, 'median': 1.2, 'geomean': 1.2}}
    """
    ref = {(r["session"], r["turn"]): r for r in rows if r["config"] == reference and r["ok"]}
    ratios: dict[str, list[float]] = {}
    for r in rows:
        other = ref.get((r["session"], r["turn"]))
        if (r["config"] != reference and r["ok"] and other is not None and r["answer_sha"] == other["answer_sha"]
                and r["decode_tok_s"] > 0 and other["decode_tok_s"] > 0):
            ratios.setdefault(r["config"], []).append(r["decode_tok_s"] / other["decode_tok_s"])
    return {config: {"turns": len(v), "median": round(statistics.median(v), 4),
                     "geomean": round(statistics.geometric_mean(v), 4)} for config, v in ratios.items()}


def print_summary(summary: dict[str, dict]) -> None:
    base = summary.get("no-spec")
    for config, s in summary.items():
        ratio = f" ({s['decode_tok_s_mean'] / base['decode_tok_s_mean']:.2f}x no-spec)" if base and config != "no-spec" else ""
        print(f"\n{config}: {s['turns']} turns, mean decode {s['decode_tok_s_mean']:.2f} tok/s{ratio}")
        for t, v in s["per_turn"].items():
            acc = f"{v['accept_length']:.2f}" if v["accept_length"] is not None else "-"
            print(f"  turn {t}: ctx {v['context_tokens']:7.0f}  {v['decode_tok_s']:6.2f} tok/s  τ {acc}")
        if s["accept_length_slope_per_1k_ctx"] is not None:
            print(f"  accepted length vs context: {s['accept_length_slope_per_1k_ctx']:+.3f} per 1k tokens")
        if s["decode_tok_s_slope_per_1k_ctx"] is not None:
            print(f"  decode tok/s vs context:    {s['decode_tok_s_slope_per_1k_ctx']:+.3f} per 1k tokens")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default=str(DEFAULT_SESSIONS))
    p.add_argument("--max-sessions", type=int, default=None)
    p.add_argument("--model-path", default=None, help="target HF folder (default: the packaged SmolLM2-135M)")
    add_drafter_args(p)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list (default {DEFAULT_CONFIGS})")
    p.add_argument("--attach", action="append", default=[], metavar="NAME=URL")
    p.add_argument("--max-new-tokens", type=int, default=256, help="per turn (answers may stop earlier at EOS)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus of every request (1 = off)")
    p.add_argument("--session-time-limit-s", type=float, default=900.0)
    p.add_argument("--request-timeout-s", type=float, default=600.0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-total-tokens", type=int, default=32768)
    p.add_argument("--out-dir", default=str(ROOT / "benchmark" / "results" / "coding_session_replay"))
    p.add_argument("--interleave", action="store_true",
                   help="all servers up at once; each session on every configuration in turn (paired on a drifting host)")
    args = p.parse_args(argv)
    try:
        args.attach_urls = parse_attach(args.attach)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sessions = load_sessions(args.sessions, args.max_sessions)
    configs = [c for c in args.configs.split(",") if c]
    flags = launch_flags(configs, args)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with terminate_on_signals():
        try:
            if args.interleave:
                with contextlib.ExitStack() as stack:
                    bases = {name: stack.enter_context(server_for(name, flags, args, out_dir)) for name in configs}
                    for k, session in enumerate(sessions):
                        for name in configs[k % len(configs):] + configs[:k % len(configs)]:
                            rows.extend(replay_session(bases[name], name, session, args))
            else:
                for name in configs:
                    with server_for(name, flags, args, out_dir) as base:
                        for session in sessions:
                            rows.extend(replay_session(base, name, session, args))
        except KeyboardInterrupt:
            print("interrupted: servers stopped; writing what was measured", file=sys.stderr)
        finally:
            summary = summarize(rows)
            identical = same_answers(rows, configs[0])
            for config, (same, total) in identical.items():
                if config in summary:
                    summary[config]["answers_identical_to_" + configs[0]] = [same, total]
            for config, paired in paired_ratios(rows, configs[0]).items():
                summary[config]["paired_decode_ratio_to_" + configs[0]] = paired
            with open(out_dir / "coding_session_replay.json", "w") as f:
                json.dump({"args": {k: v for k, v in vars(args).items() if k != "attach_urls"},
                           "summary": summary, "turns": rows}, f, indent=1)
            if rows:
                with open(out_dir / "coding_session_replay.csv", "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
            from benchmark.common.plots import plot_replay
            plot_replay(rows, out_dir / "replay.png")
    print_summary(summary)
    if len(identical) > 1:
        print(f"\nanswers text-identical to {configs[0]}'s: "
              + ", ".join(f"{c} {same}/{total}" for c, (same, total) in identical.items() if c != configs[0]))
        for c, s in summary.items():
            paired = s.get("paired_decode_ratio_to_" + configs[0])
            if paired:
                print(f"{c} / {configs[0]} decode tok/s on those turns, paired: median {paired['median']:.3f}, "
                      f"geometric mean {paired['geomean']:.3f} ({paired['turns']} turns)")
    print(f"\nwrote {out_dir}/coding_session_replay.json, .csv, replay.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
