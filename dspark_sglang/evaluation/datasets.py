"""Benchmark prompt files (`{"turns": [...]}` per line, see shared/datasets/README.md) -> token ids.

Evaluations use the FIRST turn of the FIRST N lines (lines after them stay free for training) and the
target tokenizer's chat template with the generation prompt appended.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def load_first_turns(path: str | Path, num_samples: int | None = None) -> list[str]:
    """First user turn of the first `num_samples` lines (all lines when None).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not JSON or has no non-empty "turns" list (file and line number named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist (expected a .jsonl of {{\"turns\": [...]}})")
    prompts: list[str] = []
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if num_samples is not None and len(prompts) >= num_samples:
                break
            if not line.strip():
                continue
            try:
                turns = json.loads(line).get("turns")
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ValueError(f"{path}:{line_no} is not a JSON object: {exc}") from exc
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
                raise ValueError(f"{path}:{line_no} has no non-empty \"turns\" list of strings")
            prompts.append(turns[0])
    if not prompts:
        raise ValueError(f"dataset file {path} has no prompts")
    return prompts


def encode_chat(tokenizer, user_message: str) -> torch.Tensor:
    """[T] int64 ids of a one-turn chat with the generation prompt (the tokenizer's chat template)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_message}], tokenize=False,
                                         add_generation_prompt=True)
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.int64)
