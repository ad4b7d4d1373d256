"""Coding-session files (schema: benchmark/sessions/build_coding_sessions.py): loading with checks, and
how a turn becomes a user message (turn 1 carries the repository files)."""
from __future__ import annotations

import json
from pathlib import Path

from dspark_sglang.training.repository_prompts import files_block  # noqa: F401  (one format for both)


def load_sessions(path: str | Path, limit: int | None = None) -> list[dict]:
    """Sessions of a JSONL file, validated: each needs `id` and a non-empty `turns` list."""
    sessions = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            s = json.loads(line)
            turns = s.get("turns")
            if not s.get("id") or not isinstance(turns, list) or not turns:
                raise SystemExit(f"{path}:{line_no}: a session needs 'id' and a non-empty 'turns' list")
            for t in turns:
                if not isinstance(t, str) and not (isinstance(t, dict) and isinstance(t.get("text"), str)):
                    raise SystemExit(f"{path}:{line_no}: each turn is a string or {{'text': ..., 'files': [...]}}")
            sessions.append(s)
            if limit and len(sessions) >= limit:
                break
    return sessions


def turn_message(session: dict, index: int) -> str:
    """User message of turn `index`: turn 1 carries the repository files, later turns their own files."""
    turn = session["turns"][index]
    text, files = (turn, []) if isinstance(turn, str) else (turn["text"], turn.get("files") or [])
    if index == 0 and session.get("context_files"):
        files = list(session["context_files"]) + list(files)
        return f"Repository files:\n\n{files_block(files)}\n\n{text}"
    return f"{text}\n\n{files_block(files)}" if files else text
