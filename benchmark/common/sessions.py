"""Coding-session files (schema: benchmark/sessions/build_coding_sessions.py): loading with checks, and
how a turn becomes a user message (turn 1 carries the repository files)."""
from __future__ import annotations

from pathlib import Path

from dspark_sglang.evaluation.coding_sessions import read_sessions
from dspark_sglang.training.repository_prompts import files_block  # noqa: F401  (one format for both)


def load_sessions(path: str | Path, limit: int | None = None) -> list[dict]:
    """Sessions of a JSONL file, validated (`dspark_sglang.evaluation.coding_sessions.read_sessions`); a bad
    file exits with its line."""
    try:
        return read_sessions(path, limit)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def turn_message(session: dict, index: int) -> str:
    """User message of turn `index`: turn 1 carries the repository files, later turns their own files."""
    turn = session["turns"][index]
    text, files = (turn, []) if isinstance(turn, str) else (turn["text"], turn.get("files") or [])
    if index == 0 and session.get("context_files"):
        files = list(session["context_files"]) + list(files)
        return f"Repository files:\n\n{files_block(files)}\n\n{text}"
    return f"{text}\n\n{files_block(files)}" if files else text
