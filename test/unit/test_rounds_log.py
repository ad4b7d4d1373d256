"""The serving worker's rounds log (`--dspark-rounds-log`) and the per-cell analysis of
benchmark/train/serving_acceptance.py: what is written is read back, slices by line range, and the
statistics match hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dspark_sglang.serving.rounds_log import RoundsLog, count_lines, read_rounds


def _write(path, steps):
    log = RoundsLog(str(path))
    for conf, verified, accepted, temps in steps:
        log.record(None if conf is None else torch.tensor(conf), torch.tensor(verified), torch.tensor(accepted),
                   torch.tensor(temps))
    log.close()


def test_rounds_round_trip_and_line_slices(tmp_path):
    path = tmp_path / "rounds.jsonl"
    assert count_lines(str(path)) == 0
    _write(path, [([[1.0, -1.0], [0.5, 0.0]], [2, 2], [1, 0], [0.0, 1.0]),
                  ([[2.0, 2.0]], [1], [1], [0.7])])
    assert count_lines(str(path)) == 2
    rounds = read_rounds(str(path))
    assert rounds.conf.tolist() == [[1.0, -1.0], [0.5, 0.0], [2.0, 2.0]]
    assert rounds.verified.tolist() == [2, 2, 1] and rounds.accepted.tolist() == [1, 0, 1]
    assert rounds.temperature.tolist() == pytest.approx([0.0, 1.0, 0.7])
    later = read_rounds(str(path), start=1)
    assert later.accepted.tolist() == [1] and later.conf.tolist() == [[2.0, 2.0]]


def test_rounds_without_confidence_head(tmp_path):
    path = tmp_path / "rounds.jsonl"
    _write(path, [(None, [3, 3], [3, 1], [0.0, 0.0])])
    rounds = read_rounds(str(path))
    assert rounds.conf is None and rounds.accepted.tolist() == [3, 1]


def test_analyse_rounds_tau_conditional_acceptance_and_ece():
    from benchmark.train.serving_acceptance import analyse_rounds
    from dspark_sglang.serving.rounds_log import Rounds

    # γ = 2, all verified: accepted 0, 1, 2, 2 -> τ = 1 + 5/4; P(k=1) = 3/4, P(k=2 | k=1) = 2/3.
    conf = np.array([[0.0, 0.0]] * 4)                          # σ = 0.5: survival 0.5, 0.25
    rounds = Rounds(conf=conf, verified=np.array([2, 2, 2, 2]), accepted=np.array([0, 1, 2, 2]),
                    temperature=np.zeros(4))
    out = analyse_rounds(rounds, 2, sts_temperatures=[1.0, 1.0])
    assert out["rounds"] == 4 and out["tau_rounds"] == pytest.approx(2.25)
    assert out["conditional_acceptance"] == pytest.approx([0.75, 2 / 3])
    assert out["conditional_acceptance_rounds"] == [4, 3]
    # one bin per slot value: |0.5 - 0.75| over 4 slots, |0.25 - 0.5| over 4 slots -> 0.25
    assert out["ece_before_sts"] == pytest.approx(0.25) and out["ece_after_sts"] == pytest.approx(0.25)
    sig = lambda z: 1 / (1 + math.exp(-z))                      # noqa: E731
    rounds.conf = np.array([[1.0, 1.0]] * 4)
    scaled = analyse_rounds(rounds, 2, sts_temperatures=[2.0, 2.0])
    a1, a2 = sig(1.0), sig(1.0) ** 2                               # different bins: ECE = mean of the two gaps
    assert scaled["ece_before_sts"] == pytest.approx((abs(a1 - 0.75) + abs(a2 - 0.5)) / 2)
    b1, b2 = sig(0.5), sig(0.5) ** 2
    assert scaled["ece_after_sts"] == pytest.approx((abs(b1 - 0.75) + abs(b2 - 0.5)) / 2)
    none = analyse_rounds(Rounds(conf=None, verified=np.array([2]), accepted=np.array([1]),
                                 temperature=np.zeros(1)), 2)
    assert "ece_before_sts" not in none and none["conditional_acceptance"][0] == 1.0
    assert math.isclose(none["tau_rounds"], 2.0)
