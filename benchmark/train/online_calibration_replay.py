"""ECE of prefix survival with the serving worker's online calibration, replayed on logged verify rounds.

`serving_acceptance.py` serves every (dataset, temperature) cell with `--dspark-policy static` (every
draft verified) and logs each verify step's raw confidence logits and outcomes (`--dspark-rounds-log`).
Because the static policy's decisions do not depend on the temperatures, those steps can be replayed in
their logged order through `OnlineCalibration` exactly as the worker runs it
(`--dspark-online-calibration auto`): before each step, the survivals use the calibration fitted on the
steps before it; then the step's outcomes are observed. Each cell starts from the offline STS
temperatures (a fresh server).

The ECE is the evaluator's: prefix survival against 1[accepted ≥ k], pooled over the slots of the
fully verified rounds, 10 bins. Printed per cell: ECE with the offline temperatures (`ece_after_sts`)
and with the online calibration.

    python benchmark/train/online_calibration_replay.py --tau-json benchmark/train/serving_tau.json --drafter dspark \
        --sts dspark_sglang/assets/drafters/smollm2-135m-dspark/sts.json --out benchmark/train/online_calibration_replay.json

The rounds logs named in --tau-json must exist (they stay in the run's work folder).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dspark_sglang.calibration.online_calibration import OnlineCalibration  # noqa: E402
from dspark_sglang.calibration.sts import (expected_calibration_error, prefix_survival,  # noqa: E402
                                           read_temperatures, survival_labels)
from dspark_sglang.serving.rounds_log import read_steps  # noqa: E402


def replay(steps, offline: list[float], gamma: int) -> dict:
    """ECE of prefix survival over fully verified rounds: offline temperatures vs the online calibration."""
    cal = OnlineCalibration(torch.tensor(offline, dtype=torch.float64))
    offline_a, online_a, labels = [], [], []
    for step in steps:
        if step.conf is None:
            continue
        conf, verified, accepted = step.conf, step.verified, step.accepted
        full = verified == gamma
        if full.any():
            offline_a.append(prefix_survival(conf[full], offline))
            online_a.append(torch.cumprod(cal.confidence(torch.from_numpy(conf[full])), dim=1).numpy())
            labels.append(survival_labels(accepted[full], gamma))
        cal.observe(torch.from_numpy(conf), torch.from_numpy(verified), torch.from_numpy(accepted))
    if not labels:
        return {}
    y = np.concatenate(labels).ravel()
    return {"rounds": int(sum(len(x) for x in labels)),
            "ece_offline_sts": expected_calibration_error(np.concatenate(offline_a).ravel(), y),
            "ece_online_calibration": expected_calibration_error(np.concatenate(online_a).ravel(), y),
            "final_temperatures": [round(float(t), 3) for t in cal.temperatures],
            "final_biases": [round(float(b), 3) for b in cal.biases]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tau-json", default=str(ROOT / "benchmark" / "train" / "serving_tau.json"))
    ap.add_argument("--drafter", default="dspark", help="drafter name in --tau-json")
    ap.add_argument("--sts", default=str(ROOT / "dspark_sglang" / "assets" / "drafters" / "smollm2-135m-dspark" / "sts.json"))
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args(argv)
    offline = read_temperatures(args.sts)
    gamma = len(offline)
    results = json.loads(Path(args.tau_json).read_text())["results"][args.drafter]
    table = {}
    print(f"{'T':>4s} {'dataset':10s} {'rounds':>7s} {'ECE offline STS':>16s} {'ECE online':>15s}")
    for temp, cells in results.items():
        for dataset, cell in cells.items():
            path, (start, stop) = cell["rounds_log"], cell["rounds_lines"]
            row = replay(read_steps(path, start, stop), offline, gamma)
            if not row:
                continue
            table.setdefault(temp, {})[dataset] = row
            print(f"{float(temp):4.1f} {dataset:10s} {row['rounds']:7d} {100 * row['ece_offline_sts']:15.2f}% "
                  f"{100 * row['ece_online_calibration']:14.2f}%")
    if args.out:
        Path(args.out).write_text(json.dumps({"sts": args.sts, "offline_temperatures": offline, "cells": table},
                                             indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
