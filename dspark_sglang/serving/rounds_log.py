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
from typing import Iterator

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


def read_steps(path: str, start: int = 0, stop: int | None = None) -> Iterator[Rounds]:
    """The verify steps of lines [start, stop) of a rounds log, in order, one `Rounds` per step."""
    with open(path) as f:
        for i, raw in enumerate(f):
            if i < start:
                continue
            if stop is not None and i >= stop:
                break
            line = json.loads(raw)
            yield Rounds(conf=None if line["conf"] is None else np.asarray(line["conf"], dtype=np.float64),
                         verified=np.asarray(line["verified"], dtype=np.int64),
                         accepted=np.asarray(line["accepted"], dtype=np.int64),
                         temperature=np.asarray(line["temperature"], dtype=np.float64))


def read_rounds(path: str, start: int = 0, stop: int | None = None) -> Rounds:
    """The request-rounds of lines [start, stop) of a rounds log."""
    steps = list(read_steps(path, start, stop))
    confs = [s.conf for s in steps if s.conf is not None]
    if confs and len(confs) != len(steps):
        raise ValueError(f"{path}: some steps have confidence logits and some do not (mixed drafters?)")
    joined = lambda arrays, dtype: np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)  # noqa: E731
    return Rounds(conf=np.concatenate(confs) if confs else None,
                  verified=joined([s.verified for s in steps], np.int64),
                  accepted=joined([s.accepted for s in steps], np.int64),
                  temperature=joined([s.temperature for s in steps], np.float64))
