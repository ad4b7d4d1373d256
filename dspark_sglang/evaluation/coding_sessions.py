"""Coding-session files (JSONL; schema in benchmark/sessions/build_coding_sessions.py): reading with checks
and the source files a session pastes. The replay benchmark reads them to replay, the drafter trainer to keep
the evaluation sessions' modules out of its long-context prompts."""
from __future__ import annotations

import json
from pathlib import Path


def read_sessions(path: str | Path, limit: int | None = None) -> list[dict]:
    """Sessions of a JSONL file, validated: each needs `id` and a non-empty `turns` list whose items are
    strings or {"text": ..., "files": [...]}. Raises ValueError naming the file and line."""
    sessions = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            s = json.loads(line)
            turns = s.get("turns")
            if not s.get("id") or not isinstance(turns, list) or not turns:
                raise ValueError(f"{path}:{line_no}: a session needs 'id' and a non-empty 'turns' list")
            for t in turns:
                if not isinstance(t, str) and not (isinstance(t, dict) and isinstance(t.get("text"), str)):
                    raise ValueError(f"{path}:{line_no}: each turn is a string or {{'text': ..., 'files': [...]}}")
            sessions.append(s)
            if limit and len(sessions) >= limit:
                break
    return sessions


def session_files(session: dict) -> list[dict]:
    """Every {"path", "content"} file the session pastes: its repository context, then each turn's files."""
    files = list(session.get("context_files") or [])
    for turn in session["turns"]:
        if isinstance(turn, dict):
            files += list(turn.get("files") or [])
    return files
