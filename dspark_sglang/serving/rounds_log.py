"""Per-request verify rounds written by the serving worker (`--dspark-rounds-log PATH`), for offline
acceptance and calibration analysis of a drafter under real serving (τ, conditional acceptance per
position, ECE of prefix survival before / after STS).

One JSON line per verify step: {"conf": [[z_1..z_γ] per request] | null, "verified": [ℓ_r],
"accepted": [accepted drafts], "temperature": [T_r]}. `conf` holds the RAW confidence logits (before
STS), so any temperature vector can be applied afterwards. The file is appended to and flushed every
step, so a reader may take the lines written between two moments of a run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch


class RoundsLog:
    """Appends one line per verify step to `path`."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)

    def record(self, conf_logits: torch.Tensor | None, verify_lens: torch.Tensor, accepted: torch.Tensor,
               temperatures: torch.Tensor) -> None:
        """conf_logits [R, γ] or None (no confidence head), verify_lens / accepted / temperatures [R]."""
        line = {"conf": None if conf_logits is None else conf_logits.float().cpu().tolist(),
                "verified": verify_lens.cpu().tolist(), "accepted": accepted.cpu().tolist(),
                "temperature": temperatures.float().cpu().tolist()}
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._file.close()


def count_lines(path: str) -> int:
    """Lines written so far (0 when the file does not exist yet): a position to read from later."""
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


@dataclass
class Rounds:
    """Request-rounds read back from a log: conf [N, γ] raw logits (None without a confidence head),
    verified [N], accepted [N], temperature [N]."""

    conf: np.ndarray | None
    verified: np.ndarray
    accepted: np.ndarray
    temperature: np.ndarray


def read_rounds(path: str, start: int = 0, stop: int | None = None) -> Rounds:
    """The request-rounds of lines [start, stop) of a rounds log."""
    conf, verified, accepted, temps = [], [], [], []
    with open(path) as f:
        for i, raw in enumerate(f):
            if i < start:
                continue
            if stop is not None and i >= stop:
                break
            line = json.loads(raw)
            if line["conf"] is not None:
                conf.extend(line["conf"])
            verified.extend(line["verified"])
            accepted.extend(line["accepted"])
            temps.extend(line["temperature"])
    if conf and len(conf) != len(verified):
        raise ValueError(f"{path}: some steps have confidence logits and some do not (mixed drafters?)")
    return Rounds(conf=np.asarray(conf, dtype=np.float64) if conf else None,
                  verified=np.asarray(verified, dtype=np.int64), accepted=np.asarray(accepted, dtype=np.int64),
                  temperature=np.asarray(temps, dtype=np.float64))
