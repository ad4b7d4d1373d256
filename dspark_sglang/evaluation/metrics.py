"""Acceptance and calibration metrics of speculative decoding rounds, as pure functions over arrays.

Conventions: one row per round; `accept_lens[i]` = drafts accepted in round i, `verify_lens[i]` = drafts
the target verified (ℓ ≤ γ), `block_size` = γ drafted per round. Slots are 1-based in the maths
(k = 1..γ) and 0-based in arrays (index k-1).
"""
from __future__ import annotations

import numpy as np

from dspark_sglang.calibration.sts import expected_calibration_error  # noqa: F401  (one ECE for both)


def mean_accepted_length(accept_lens: np.ndarray) -> float:
    """τ: mean over rounds of accepted drafts + 1 (the correction / bonus token counts, as in the paper).

    >>> mean_accepted_length(np.array([0, 2, 4]))     # (1 + 3 + 5) / 3
    3.0
    """
    accept_lens = np.asarray(accept_lens)
    return float(np.mean(accept_lens + 1)) if accept_lens.size else float("nan")


def acceptance_at_k(accept_lens: np.ndarray, block_size: int) -> np.ndarray:
    """[γ] P(accepted ≥ k) for k = 1..γ, over all rounds.

    >>> acceptance_at_k(np.array([0, 1, 3]), 3).tolist()
    [0.6666666666666666, 0.3333333333333333, 0.3333333333333333]
    """
    accept_lens = np.asarray(accept_lens)
    ks = np.arange(1, block_size + 1)
    if accept_lens.size == 0:
        return np.full(block_size, np.nan)
    return (accept_lens[:, None] >= ks[None, :]).mean(axis=0)


def conditional_acceptance(accept_lens: np.ndarray, verify_lens: np.ndarray, block_size: int) -> np.ndarray:
    """[γ] per-position conditional acceptance: P(slot k accepted | slots 1..k-1 accepted, slot k verified).

    Denominator for slot k: rounds with accepted ≥ k-1 and verify_len ≥ k; numerator: rounds with
    accepted ≥ k. NaN where the denominator is 0. (DSpark §5: flat for DSpark, decaying for DFlash.)

    >>> conditional_acceptance(np.array([0, 1, 2]), np.array([3, 3, 2]), 3).tolist()   # k=3 never verified
    [0.6666666666666666, 0.5, nan]
    """
    accept_lens = np.asarray(accept_lens)
    ks = np.arange(1, block_size + 1)
    den = rounds_reaching(accept_lens, verify_lens, block_size)
    passed = accept_lens[:, None] >= ks[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, passed.sum(axis=0) / np.maximum(den, 1), np.nan)


def rounds_reaching(accept_lens: np.ndarray, verify_lens: np.ndarray, block_size: int) -> np.ndarray:
    """[γ] rounds in which slot k was verified with slots 1..k-1 accepted: the denominators of
    `conditional_acceptance` (how much evidence each position's estimate rests on).

    >>> rounds_reaching(np.array([0, 1, 2]), np.array([3, 3, 2]), 3).tolist()
    [3, 2, 0]
    """
    accept_lens, verify_lens = np.asarray(accept_lens), np.asarray(verify_lens)
    ks = np.arange(1, block_size + 1)
    return ((accept_lens[:, None] >= ks[None, :] - 1) & (verify_lens[:, None] >= ks[None, :])).sum(axis=0)


def verify_rate(verify_lens: np.ndarray, block_size: int) -> float:
    """Σ verified drafts / Σ drafted (γ per round): 1.0 without a threshold.

    >>> verify_rate(np.array([7, 3]), 7)
    0.7142857142857143
    """
    verify_lens = np.asarray(verify_lens)
    return float(verify_lens.sum() / (block_size * verify_lens.size)) if verify_lens.size else float("nan")


def slot_acceptance_samples(accept_lens: np.ndarray, verify_lens: np.ndarray, conf: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, label) of every TESTED slot: slot k (0-based) with k < verify_len and k ≤ accepted,
    i.e. the draft was actually compared; label = 1 if accepted. Slots after the first rejection were
    never judged and carry no label.

    Args:
        accept_lens, verify_lens: [N] ints.  conf: [N, γ] c_k in [0, 1].
    Returns:
        scores [M] float and labels [M] bool.

    >>> s, y = slot_acceptance_samples(np.array([1]), np.array([3]), np.array([[0.9, 0.4, 0.2]]))
    >>> s.tolist(), y.tolist()
    ([0.9, 0.4], [True, False])
    """
    accept_lens, verify_lens, conf = np.asarray(accept_lens), np.asarray(verify_lens), np.asarray(conf)
    k = np.arange(conf.shape[1])[None, :]
    tested = (k < verify_lens[:, None]) & (k <= accept_lens[:, None])
    return conf[tested], (k < accept_lens[:, None])[tested]


def prefix_survival_samples(accept_lens: np.ndarray, verify_lens: np.ndarray, conf: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(prefix survival Π_{i≤k} c_i, label accepted ≥ k) for every VERIFIED slot k ≤ verify_len.

    >>> a, y = prefix_survival_samples(np.array([1]), np.array([2]), np.array([[0.5, 0.5, 0.5]]))
    >>> a.tolist(), y.tolist()
    ([0.5, 0.25], [True, False])
    """
    accept_lens, verify_lens, conf = np.asarray(accept_lens), np.asarray(verify_lens), np.asarray(conf)
    survival = np.cumprod(conf, axis=1)
    k = np.arange(conf.shape[1])[None, :]
    verified = k < verify_lens[:, None]
    return survival[verified], (k < accept_lens[:, None])[verified]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties ½.
    NaN when either class is empty.

    >>> roc_auc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]))   # pairs: (.9>.8)(.9>.1)(.3<.8)(.3>.1)
    0.75
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    num_pos, num_neg = int(labels.sum()), int((~labels).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks (handles ties).
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    u = ranks[labels].sum() - num_pos * (num_pos + 1) / 2
    return float(u / (num_pos * num_neg))
