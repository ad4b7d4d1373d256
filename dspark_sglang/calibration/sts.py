"""Sequential Temperature Scaling (STS, DSpark §3.2.2 / §7 of the reference notes).

The confidence head gives logits z_k per block slot k = 1..γ; c_k = σ(z_k / T_k). The scheduler uses
the PREFIX SURVIVAL a_k = Π_{i≤k} c_i ≈ P(drafts 1..k all accepted). STS fits T_1, ..., T_γ in order:
for slot k, a 1-D grid search picks the T_k minimising the ECE of a_k against the observed label
1[accepted ≥ k] (real verification outcomes), with T_1..T_{k-1} already fixed.

Labels come from real verification rounds (`accept_lens`: accepted drafts per round; all γ slots are
verified in the rounds used for fitting, so every slot k has a label).
"""
from __future__ import annotations

import json

import numpy as np

STS_FILE = "sts.json"
"""Name of the temperatures file next to a drafter checkpoint (fit_sts.py writes it, the worker reads it)."""

DEFAULT_GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 401))
"""Candidate temperatures, log-spaced in [0.05, 20]."""


def read_temperatures(path) -> list[float]:
    """STS temperatures from a JSON file: a list (what fit_sts.py writes) or {"temperatures": [...]}."""
    with open(path) as f:
        data = json.load(f)
    temps = data.get("temperatures") if isinstance(data, dict) else data
    if not isinstance(temps, list) or not all(isinstance(t, (int, float)) for t in temps):
        raise ValueError(f"{path}: expected a JSON list of temperatures or {{\"temperatures\": [...]}}")
    return [float(t) for t in temps]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = 10) -> float:
    """ECE with `num_bins` equal-width bins on [0, 1]: Σ_b (n_b / N)·|mean(prob)_b − mean(label)_b|.

    >>> expected_calibration_error(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 0, 0, 0]))
    0.25
    """
    probs, labels = np.asarray(probs, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if probs.size == 0:
        return float("nan")
    bins = np.minimum((probs * num_bins).astype(np.int64), num_bins - 1)
    sum_p = np.bincount(bins, weights=probs, minlength=num_bins)
    sum_y = np.bincount(bins, weights=labels, minlength=num_bins)
    return float(np.abs(sum_p - sum_y).sum() / probs.size)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def prefix_survival(conf_logits: np.ndarray, temperatures) -> np.ndarray:
    """a_k = Π_{i≤k} σ(z_i / T_i): conf_logits [N, γ], temperatures [γ] -> [N, γ]."""
    z = np.asarray(conf_logits, dtype=np.float64)
    return np.cumprod(_sigmoid(z / np.asarray(temperatures, dtype=np.float64)[None, :]), axis=1)


def survival_labels(accept_lens: np.ndarray, block_size: int) -> np.ndarray:
    """[N, γ] bool: slot k (1-based) survived iff accepted ≥ k."""
    k = np.arange(1, block_size + 1)[None, :]
    return np.asarray(accept_lens)[:, None] >= k


def prefix_survival_ece(conf_logits: np.ndarray, accept_lens: np.ndarray, temperatures,
                        num_bins: int = 10) -> float:
    """ECE of prefix survival pooled over all slots (the evaluator's `ece_prefix_survival`)."""
    a = prefix_survival(conf_logits, temperatures)
    return expected_calibration_error(a.ravel(), survival_labels(accept_lens, a.shape[1]).ravel(), num_bins)


def fit_sts(conf_logits: np.ndarray, accept_lens: np.ndarray, grid: np.ndarray = DEFAULT_GRID,
            num_bins: int = 10) -> list[float]:
    """Fit the γ STS temperatures.

    Args:
        conf_logits: [N, γ] raw confidence logits of N verified rounds (all γ slots verified).
        accept_lens: [N] accepted drafts per round (real verification outcomes).
        grid:        candidate temperatures (> 0).
    Returns:
        [γ] temperatures; slot k is fitted with slots < k fixed (DSpark: sequential, left to right).

    Example:
        >>> temps = fit_sts(logits, accept_lens)           # e.g. [1.3, 1.1, 0.9, ...]  # doctest: +SKIP
        >>> json.dump(temps, open("sts.json", "w"))  # doctest: +SKIP
    """
    z = np.asarray(conf_logits, dtype=np.float64)
    num, gamma = z.shape
    labels = survival_labels(accept_lens, gamma)
    temps: list[float] = []
    prev = np.ones(num)                                               # Π_{i<k} c_i with fitted T_i
    for k in range(gamma):
        cands = _sigmoid(z[:, k][None, :] / grid[:, None]) * prev[None, :]    # [G, N]
        errs = [expected_calibration_error(c, labels[:, k], num_bins) for c in cands]
        best = int(np.argmin(errs))
        temps.append(float(grid[best]))
        prev = cands[best]
    return temps
