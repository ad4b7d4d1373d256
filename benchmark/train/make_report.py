"""Tables and the conditional-acceptance plot from `eval_acceptance.py --json` outputs.

    python benchmark/train/make_report.py --dspark-t0 A.json --dspark-t1 B.json --dflash-t0 C.json \
        --dflash-t1 D.json [--dspark-t1-sts E.json] --out benchmark/train
Writes summary.json and conditional_acceptance.png into --out and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(path):
    return json.loads(Path(path).read_text())["datasets"] if path else None


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("dspark-t0", "dspark-t1", "dflash-t0", "dflash-t1", "dspark-t1-sts"):
        p.add_argument(f"--{name}", default=None)
    p.add_argument("--out", default="benchmark/train")
    a = p.parse_args()
    runs = {k: load(getattr(a, k.replace("-", "_"))) for k in ("dspark-t0", "dspark-t1", "dflash-t0", "dflash-t1",
                                                                "dspark-t1-sts")}
    out: dict = {"tau": {}, "gain": {}, "conditional_acceptance": {}, "ece": {}, "auc": {}}
    lines = ["| dataset | T | DSpark τ | DFlash τ | gain |", "|---|---|---|---|---|"]
    for temp in ("t0", "t1"):
        ds, df = runs[f"dspark-{temp}"], runs[f"dflash-{temp}"]
        if not ds or not df:
            continue
        gains = []
        for name in ds:
            g = ds[name]["tau"] / df[name]["tau"] - 1
            gains.append(g)
            out["tau"][f"{name}/{temp}"] = {"dspark": ds[name]["tau"], "dflash": df[name]["tau"]}
            lines.append(f"| {name} | {temp[1]} | {ds[name]['tau']:.3f} | {df[name]['tau']:.3f} | {100 * g:+.1f}% |")
            out["conditional_acceptance"][f"{name}/{temp}"] = {
                "dspark": ds[name]["conditional_acceptance"], "dflash": df[name]["conditional_acceptance"]}
            out["ece"][f"{name}/{temp}/before_sts"] = ds[name].get("ece_before_sts", ds[name]["ece_prefix_survival"])
            out["auc"][f"{name}/{temp}"] = ds[name]["auc"]
        out["gain"][temp] = sum(gains) / len(gains)
        lines.append(f"| **macro** | {temp[1]} | | | **{100 * out['gain'][temp]:+.1f}%** |")
    if runs["dspark-t1-sts"]:
        for name, s in runs["dspark-t1-sts"].items():
            out["ece"][f"{name}/t1/sts"] = s["ece_prefix_survival"]
    print("\n".join(lines))
    print(json.dumps(out["ece"], indent=1))
    outdir = Path(a.out)
    (outdir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    temps = [t for t in ("t0", "t1") if runs[f"dspark-{t}"] and runs[f"dflash-{t}"]]
    fig, axes = plt.subplots(1, len(temps), figsize=(6 * len(temps), 4), squeeze=False)
    for ax, temp in zip(axes[0], temps):
        for label, style in (("dspark", "-o"), ("dflash", "--s")):
            for name, s in runs[f"{label}-{temp}"].items():
                ca = [x if x is not None else float("nan") for x in s["conditional_acceptance"]]
                ax.plot(range(1, len(ca) + 1), ca, style, label=f"{label} {name}", alpha=0.8)
        ax.set_xlabel("draft position k")
        ax.set_ylabel("P(accept k | 1..k-1 accepted)")
        ax.set_title(f"conditional acceptance, T={temp[1]}")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "conditional_acceptance.png", dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
