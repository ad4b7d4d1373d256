"""Aggregate `RequestResult`s of one dataset into the reported numbers, and format them as a table."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from dspark_sglang.evaluation import metrics
from dspark_sglang.evaluation.records import RequestResult


def summarize(results: Sequence[RequestResult], block_size: int) -> dict[str, Any]:
    """Acceptance / calibration metrics over all rounds of `results` (JSON-friendly dict)."""
    rounds = [rd for res in results for rd in res.rounds]
    accept = np.array([rd.accept_len for rd in rounds], dtype=np.int64)
    verify = np.array([rd.verify_len for rd in rounds], dtype=np.int64)
    out: dict[str, Any] = {
        "num_requests": len(results),
        "num_rounds": len(rounds),
        "num_generated_tokens": sum(len(res.output_ids) for res in results),
        "tau": metrics.mean_accepted_length(accept),
        "acceptance_at_k": metrics.acceptance_at_k(accept, block_size).tolist(),
        "conditional_acceptance": metrics.conditional_acceptance(accept, verify, block_size).tolist(),
        "verify_rate": metrics.verify_rate(verify, block_size),
        "auc": None, "ece_prefix_survival": None,
    }
    if rounds and all(rd.confidence is not None for rd in rounds):
        conf = np.array([rd.confidence for rd in rounds], dtype=np.float64)     # [N, γ]
        out["auc"] = metrics.roc_auc(*metrics.slot_acceptance_samples(accept, verify, conf))
        out["ece_prefix_survival"] = metrics.expected_calibration_error(
            *metrics.prefix_survival_samples(accept, verify, conf))
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def format_table(name: str, summary: dict[str, Any]) -> str:
    """Human-readable table of one dataset's summary (and its speed numbers when present)."""
    gamma = len(summary["acceptance_at_k"])
    lines = [f"== {name}: {summary['num_requests']} requests, {summary['num_rounds']} rounds, "
             f"{summary['num_generated_tokens']} tokens",
             f"  tau (accepted+1 per round)   {_fmt(summary['tau'])}",
             f"  verify rate                  {_fmt(summary['verify_rate'])}",
             f"  confidence AUC               {_fmt(summary['auc'])}",
             f"  ECE of prefix survival       {_fmt(summary['ece_prefix_survival'])}",
             "  slot k                       " + " ".join(f"{k:>6d}" for k in range(1, gamma + 1)),
             "  P(accepted >= k)             " + " ".join(f"{_fmt(v):>6}" for v in summary["acceptance_at_k"]),
             "  P(k acc | 1..k-1 acc, k ver) " + " ".join(f"{_fmt(v):>6}" for v in summary["conditional_acceptance"])]
    for key, label in (("spec_tokens_per_s", "evaluator tokens/s"), ("hf_generate_tokens_per_s",
                                                                     "HF generate tokens/s")):
        if key in summary:
            lines.append(f"  {label:<29}{_fmt(summary[key], 1)}")
    if "greedy_match_rate" in summary:
        lines.append(f"  {'outputs == HF generate':<29}{_fmt(summary['greedy_match_rate'])} "
                     f"(requests identical token for token)")
    return "\n".join(lines)
