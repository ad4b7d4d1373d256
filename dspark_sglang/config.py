"""Process-wide settings of dspark_sglang; the only module that reads environment variables."""
from __future__ import annotations

import os
from pathlib import Path

_TRUE = ("1", "true", "yes", "on")


def allow_reference_ops() -> bool:
    """`DSPARK_ALLOW_REFERENCE_OPS=1`: let an op wrapper fall back to its torch reference when the native
    extension lacks the op (a build without `dspark_sglang._C`). Off by default: a missing kernel is an
    error, never a silent slowdown."""
    return os.environ.get("DSPARK_ALLOW_REFERENCE_OPS", "0").strip().lower() in _TRUE


def cache_dir() -> Path:
    """`DSPARK_CACHE_DIR`: where converted models and other derived artefacts are cached.
    Default `~/.cache/dspark_sglang`. The directory is not created here."""
    value = os.environ.get("DSPARK_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "dspark_sglang"
