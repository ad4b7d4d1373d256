"""Build-once directory cache: a file lock, a private temp dir, then an atomic rename.

Several processes (pytest workers, an evaluator and a server) may ask for the same converted model at
the same time. Only one converts; the others wait on the lock and then see the finished directory. A
directory is visible under its final name only once it is complete (`os.rename` of a sibling temp
dir is atomic on POSIX), so a crash mid-conversion leaves no half-written model behind.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

Converter = Callable[[Path], None]
"""Writes a complete artefact into the (empty, existing) directory it is given."""


def build_once(dest: Path, build: Converter) -> Path:
    """Return `dest`, building it with `build(tmp_dir)` first if it does not exist yet.

    Args:
        dest:  final directory; its parent is created if needed.
        build: fills a fresh temporary directory (a sibling of `dest`) with the artefact.

    Returns:
        `dest` (an existing, complete directory).

    Example:
        >>> build_once(Path("/tmp/x/model"), lambda d: (d / "config.json").write_text("{}"))
        PosixPath('/tmp/x/model')
    """
    dest = Path(dest)
    if dest.is_dir():                                   # fast path: no lock once it exists
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_path = dest.parent / f".{dest.name}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)                # released when the file closes
        if dest.is_dir():                               # another process built it while we waited
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            build(tmp)
            os.chmod(tmp, 0o777 & ~_umask())            # mkdtemp makes it 0700; others share the cache
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
