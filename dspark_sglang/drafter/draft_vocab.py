"""Draft vocabulary: the token ids a drafter drafts from, a sidecar `draft_vocab.json` next to a checkpoint.

A drafter trained with a vocabulary subset (`TrainConfig.vocab_subset`: the softmax support of training is
the most frequent tokens of its data) has never been taught anything about the other ids. Drafting only
from that subset matches training and makes the drafter's largest cost, the γ rows of lm_head (and of the
Markov head's W2) per request, V/V' times cheaper (SmolLM2: 49,152 → 9,141 ids). Verification stays
lossless: the draft distribution q is exactly what the drafts were sampled from (zero outside the subset).

The file is a JSON list of strictly increasing ids in [0, vocab_size) (or {"ids": [...]}); the DeepSpec
checkpoint itself is untouched, so other loaders keep working.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

DRAFT_VOCAB_FILE = "draft_vocab.json"


def read_draft_vocab(checkpoint_dir: str | Path, vocab_size: int) -> torch.Tensor | None:
    """[V'] int64 ids from `checkpoint_dir/draft_vocab.json`, or None when the file is absent.

    Raises:
        ValueError: naming the file and what is wrong with it (and how to fix it).
    """
    path = Path(checkpoint_dir) / DRAFT_VOCAB_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc}); fix: a JSON list of token ids, or delete the file") from exc
    ids = data.get("ids") if isinstance(data, dict) else data
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"{path}: expected a non-empty JSON list of int token ids (or {{\"ids\": [...]}})")
    t = torch.tensor(ids, dtype=torch.int64)
    if int(t.min()) < 0 or int(t.max()) >= vocab_size:
        raise ValueError(f"{path}: ids must lie in [0, vocab_size={vocab_size}); got {int(t.min())}..{int(t.max())}")
    if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"{path}: ids must be strictly increasing (sorted, no duplicates); fix: sort and dedupe")
    return t


def write_draft_vocab(checkpoint_dir: str | Path, ids: torch.Tensor) -> Path:
    """Write sorted unique `ids` as `checkpoint_dir/draft_vocab.json`; returns the path."""
    path = Path(checkpoint_dir) / DRAFT_VOCAB_FILE
    path.write_text(json.dumps(torch.unique(ids.to(torch.int64).cpu()).tolist()) + "\n")
    return path
