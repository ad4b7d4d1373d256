"""Start a local `python -m sglang.launch_server` and always stop it: used by the serving benchmarks and by
the trainer's answer generation (SGLang batches sampling far better than HF `generate` on CPU).

    with launched(model_dir, ["--dtype", "bfloat16"], Path("server.log")) as base_url:
        ...   # http://127.0.0.1:<free port>; the server's process group is killed on exit / error / Ctrl-C
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

LOCALHOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def check_local_url(url: str) -> str:
    """`url` without a trailing slash; refuses anything but 127.0.0.1 / localhost (clients stay local)."""
    host = urllib.parse.urlparse(url).hostname
    if host not in (LOCALHOST, "localhost"):
        raise ValueError(f"--attach URL {url!r}: benchmarks only talk to 127.0.0.1 or localhost")
    return url.rstrip("/")


def wait_healthy(base: str, timeout_s: float, alive: Callable[[], bool] = lambda: True, log_path=None) -> None:
    """Poll `base`/health until 200; raise if `alive()` turns false or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not alive():
            raise RuntimeError(f"server exited before it became healthy; see {log_path}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"server at {base} not healthy after {timeout_s:.0f} s; see {log_path}")
        time.sleep(1.0)


def _stop_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the server when the launching process dies, even by SIGKILL
    (Linux prctl PR_SET_PDEATHSIG; a no-op elsewhere)."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the main thread, SIGTERM raises KeyboardInterrupt so the `finally` that stops the server runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def launched(model: str, flags: list[str], log_path: Path, *, device: str = "cpu", nice: int = 0,
             max_total_tokens: int = 32768, startup_timeout_s: float = 900.0) -> Iterator[str]:
    """Start `python -m sglang.launch_server` on 127.0.0.1 and yield its base URL; always stopped after: on
    exit, error, Ctrl-C, SIGTERM (raised as KeyboardInterrupt in the main thread), and — through
    PR_SET_PDEATHSIG — when the launching process is killed outright."""
    port = _free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", LOCALHOST,
           "--port", str(port), "--max-total-tokens", str(max_total_tokens), *flags]
    if device == "cpu":
        cmd += ["--device", "cpu"]
    if "--disable-cuda-graph" not in cmd:
        cmd.append("--disable-cuda-graph")           # our worker does not capture CUDA graphs yet
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, sigterm_as_interrupt():
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            base = f"http://{LOCALHOST}:{port}"
            wait_healthy(base, startup_timeout_s, alive=lambda: proc.poll() is None, log_path=log_path)
            yield base
        finally:
            _stop_group(proc)
