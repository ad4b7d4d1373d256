"""Pure summaries behind `throughput_at_slo.py`: one concurrency level -> a row; rows -> the best
aggregate throughput each configuration sustains at a per-user tokens/s target (SLO anchor).

A level meets an anchor when its per-user decode tokens/s at the chosen percentile of users (p50 by
default: half the users get at least the anchor) is at least the anchor; the percentile is taken low
to high over users, so `p10` would be the stricter "90 % of users" reading.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]; nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize_level(config: str, concurrency: int, results: Iterable, verify_budget: float | None = None,
                    timed_out: bool = False) -> dict:
    """One row per (configuration, concurrency) from its RequestResults (failed requests counted apart).

    aggregate_tok_s = completion tokens of successful requests / (last end − first start).
    """
    results = list(results)
    ok = [r for r in results if r.ok and r.completion_tokens > 0]
    per_user = [r.decode_tok_s for r in ok]
    accept = [r.accept_length for r in ok if r.accept_length]
    if ok:
        window = max(r.start_s + r.end_to_end_s for r in ok) - min(r.start_s for r in ok)
        tokens = sum(r.completion_tokens for r in ok)
    else:
        window, tokens = 0.0, 0
    return {
        "config": config, "concurrency": concurrency, "requests": len(results), "failed": len(results) - len(ok),
        "timed_out": timed_out, "output_tokens": tokens, "window_s": window,
        "aggregate_tok_s": tokens / window if window > 0 else 0.0,
        "per_user_tok_s_mean": sum(per_user) / len(per_user) if per_user else 0.0,
        "per_user_tok_s_p50": percentile(per_user, 50), "per_user_tok_s_p90": percentile(per_user, 90),
        "per_user_tok_s_p10": percentile(per_user, 10),
        "ttft_s_p50": percentile([r.ttft_s for r in ok], 50),
        "accept_length_mean": sum(accept) / len(accept) if accept else None,
        "verify_budget_mean": verify_budget,
    }


_MEDIAN_FIELDS = ("aggregate_tok_s", "per_user_tok_s_mean", "per_user_tok_s_p50", "per_user_tok_s_p90",
                  "per_user_tok_s_p10", "ttft_s_p50", "accept_length_mean", "verify_budget_mean", "window_s")


def combine_rounds(round_rows: Sequence[dict]) -> list[dict]:
    """One row per (configuration, concurrency) from its rounds' rows (`summarize_level` + "round").

    A single round passes through unchanged. Otherwise every rate and latency is the median over the
    rounds (nan / None values left out), counts are summed, and the spread of the aggregate throughput
    is kept as aggregate_tok_s_min / _max; rows keep the order in which their level first appeared.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in round_rows:
        groups[(row["config"], row["concurrency"])].append(row)
    out = []
    for (config, conc), rows in groups.items():
        if len(rows) == 1:
            out.append({**rows[0], "rounds": 1})
            continue
        combined = {"config": config, "concurrency": conc, "rounds": len(rows),
                    "requests": sum(r["requests"] for r in rows), "failed": sum(r["failed"] for r in rows),
                    "timed_out": any(r["timed_out"] for r in rows),
                    "output_tokens": sum(r["output_tokens"] for r in rows)}
        for field in _MEDIAN_FIELDS:
            values = [r[field] for r in rows if r.get(field) is not None and not math.isnan(r[field])]
            combined[field] = statistics.median(values) if values else None
        aggregates = [r["aggregate_tok_s"] for r in rows]
        combined["aggregate_tok_s_min"], combined["aggregate_tok_s_max"] = min(aggregates), max(aggregates)
        out.append(combined)
    return out


def scheduler_vs_fixed_paired(round_rows: Sequence[dict], scheduled: str = "dspark-alg1",
                              references: Sequence[str] = ("no-spec", "dspark-static")) -> list[dict]:
    """`scheduler_vs_fixed` within each round (levels measured side by side), then per concurrency the
    median, min and max of the per-round ratios."""
    ratios: dict[int, list[float]] = defaultdict(list)
    for index in sorted({r.get("round", 0) for r in round_rows}):
        same_round = [r for r in round_rows if r.get("round", 0) == index]
        for entry in scheduler_vs_fixed(same_round, scheduled, references):
            ratios[entry["concurrency"]].append(entry["ratio"])
    return [{"concurrency": conc, "rounds": len(values), "ratio_median": statistics.median(values),
             "ratio_min": min(values), "ratio_max": max(values)} for conc, values in sorted(ratios.items())]


def best_at_slo(rows: Sequence[dict], anchor_tok_s: float, stat: str = "per_user_tok_s_p50") -> dict[str, dict | None]:
    """{config: the row with the highest aggregate_tok_s whose `stat` >= anchor (None if no level meets it)}."""
    best: dict[str, dict | None] = {}
    for row in rows:
        best.setdefault(row["config"], None)
        value = row.get(stat)
        if value is None or math.isnan(value) or value < anchor_tok_s or row["aggregate_tok_s"] <= 0:
            continue
        cur = best[row["config"]]
        if cur is None or row["aggregate_tok_s"] > cur["aggregate_tok_s"]:
            best[row["config"]] = row
    return best


def auto_anchors(rows: Sequence[dict], baseline: str = "no-spec", stat: str = "per_user_tok_s_p50",
                 count: int = 3) -> list[float]:
    """Anchors the baseline just meets: its `stat` at (up to) `count` of its levels, evenly spread over its
    levels from the slowest per-user speed it reached (highest concurrency) to the fastest, rounded down to
    0.1 tok/s."""
    levels = [r for r in rows if r["config"] == baseline and r["aggregate_tok_s"] > 0]
    values = sorted({math.floor(r[stat] * 10) / 10 for r in levels if r.get(stat) and not math.isnan(r[stat])})
    if len(values) <= count:
        return values
    picks = {round(i * (len(values) - 1) / (count - 1)) for i in range(count)} if count > 1 else {0}
    return [values[i] for i in sorted(picks)]


def slo_table(rows: Sequence[dict], anchors: Sequence[float], baseline: str = "no-spec",
              stat: str = "per_user_tok_s_p50") -> list[dict]:
    """Per anchor and configuration: best sustained throughput, its concurrency, ratio to the baseline."""
    table = []
    for anchor in anchors:
        best = best_at_slo(rows, anchor, stat)
        base = best.get(baseline)
        for config, row in best.items():
            table.append({
                "anchor_tok_s_per_user": anchor, "config": config,
                "best_aggregate_tok_s": row["aggregate_tok_s"] if row else None,
                "at_concurrency": row["concurrency"] if row else None,
                "ratio_to_baseline": (row["aggregate_tok_s"] / base["aggregate_tok_s"]
                                      if row and base and base["aggregate_tok_s"] > 0 else None),
            })
    return table


def scheduler_vs_fixed(rows: Sequence[dict], scheduled: str = "dspark-alg1",
                       references: Sequence[str] = ("no-spec", "dspark-static")) -> list[dict]:
    """Per concurrency: scheduled throughput / the better of the references (goal >= 0.98 everywhere)."""
    by = {(r["config"], r["concurrency"]): r for r in rows}
    out = []
    for conc in sorted({r["concurrency"] for r in rows}):
        s = by.get((scheduled, conc))
        refs = [by[(c, conc)] for c in references if (c, conc) in by and by[(c, conc)]["aggregate_tok_s"] > 0]
        if not s or not refs:
            continue
        best = max(refs, key=lambda r: r["aggregate_tok_s"])
        out.append({"concurrency": conc, "scheduled_tok_s": s["aggregate_tok_s"], "best_reference": best["config"],
                    "reference_tok_s": best["aggregate_tok_s"],
                    "ratio": s["aggregate_tok_s"] / best["aggregate_tok_s"]})
    return out
