"""matplotlib figures of the serving benchmarks (headless: the Agg backend)."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _by_config(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["config"]].append(r)
    return out


def plot_frontier(rows: Sequence[dict], path: Path, stat: str = "per_user_tok_s_p50",
                  anchors: Sequence[float] = ()) -> None:
    """Aggregate output tok/s (y) vs tokens/s per user (x), one line per configuration, points labelled by
    concurrency (DSpark paper Fig. 7); dashed verticals at the SLO anchors."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for config, rs in _by_config(rows).items():
        rs = sorted((r for r in rs if r["aggregate_tok_s"] > 0 and not math.isnan(r[stat])),
                    key=lambda r: r["concurrency"])
        if not rs:
            continue
        ax.plot([r[stat] for r in rs], [r["aggregate_tok_s"] for r in rs], marker="o", label=config)
        for r in rs:
            ax.annotate(str(r["concurrency"]), (r[stat], r["aggregate_tok_s"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    for a in anchors:
        ax.axvline(a, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"decode tokens/s per user ({stat.removeprefix('per_user_tok_s_')})")
    ax.set_ylabel("aggregate output tokens/s")
    ax.set_title("Throughput vs per-user speed (labels: concurrency)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_verify_budget(rows: Sequence[dict], path: Path) -> None:
    """Mean verified drafts per request-step vs concurrency for the DSPARK configurations (Fig. 8)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for config, rs in _by_config(rows).items():
        rs = sorted((r for r in rs if r.get("verify_budget_mean") is not None), key=lambda r: r["concurrency"])
        if rs:
            ax.plot([r["concurrency"] for r in rs], [r["verify_budget_mean"] for r in rs], marker="o", label=config)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("client concurrency")
    ax.set_ylabel("mean verify budget per request (drafts)")
    ax.set_title("Verification budget vs load")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_replay(turns: Sequence[dict], path: Path) -> None:
    """Per-turn decode tokens/s and accepted length vs context length, one series per configuration."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (config, rs) in enumerate(_by_config(turns).items()):
        color = colors[i % len(colors)]                    # the same colour for a configuration in both panels
        rs = sorted((r for r in rs if r.get("ok")), key=lambda r: r["context_tokens"])
        if not rs:
            continue
        ax1.scatter([r["context_tokens"] for r in rs], [r["decode_tok_s"] for r in rs], s=12, label=config, color=color)
        acc = [r for r in rs if r.get("accept_length")]
        if acc:
            ax2.scatter([r["context_tokens"] for r in acc], [r["accept_length"] for r in acc], s=12, label=config,
                        color=color)
    ax1.set_xlabel("context tokens at the turn")
    ax1.set_ylabel("decode tokens/s")
    ax1.set_title("Decode speed vs context")
    ax2.set_xlabel("context tokens at the turn")
    ax2.set_ylabel("accepted length (tokens per verify step)")
    ax2.set_title("Acceptance vs context")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
