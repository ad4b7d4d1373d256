"""Single-stream decode speed of SGLang servers on CPU: DSPARK (scheduled and static), no speculation and
SGLang's NGRAM, on HumanEval and MT-Bench first turns, in one run; prints one JSON line per
(configuration, dataset) and the ratios to no speculation.

Each configuration starts `python -m sglang.launch_server` on 127.0.0.1 (niced), sends the prompts one at
a time as chat completions (greedy unless --temperature), measures decode tok/s = completion tokens /
(end-to-end time − time to first token) per request from a stream, then stops the server.

    python benchmark/e2e/bench_decode.py --model-path ~/.cache/dspark_sglang/smollm2-135m-instruct-f32 \
        --drafter dspark_sglang/assets/drafters/smollm2-135m-dspark --num-prompts 5 --max-new-tokens 128

A random-weight drafter gives τ≈1 (DSPARK then only adds cost); use a trained one for real numbers.
Raw results: --out (default benchmark/results/bench_decode.jsonl, git-ignored).
"""
from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[2]
DATASETS = {"humaneval": "humaneval.jsonl", "mt-bench": "mt-bench.jsonl"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: str, extra: list[str], log_path: Path, timeout_s: float = 900.0):
    port = _free_port()
    cmd = ["nice", "-n", "10", sys.executable, "-m", "sglang.launch_server", "--model-path", model,
           "--device", "cpu", "--disable-cuda-graph", "--max-total-tokens", "32768", "--host", "127.0.0.1",
           "--port", str(port), *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}); see {log_path}")
                with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                    with urllib.request.urlopen(base + "/health", timeout=5) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not healthy after {timeout_s} s; see {log_path}")
                time.sleep(1.0)
            yield base
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _stream_chat(base: str, prompt: str, max_new: int, temperature: float) -> dict:
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_new,
            "temperature": temperature, "stream": True, "stream_options": {"include_usage": True}}
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=3600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            event = json.loads(line[5:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    first = first or end
    return {"tokens": tokens, "ttft_s": first - start, "decode_s": end - first}


def configurations(args) -> dict[str, list[str]]:
    common = ["--dtype", args.dtype]
    dspark = common + ["--speculative-algorithm", "DSPARK"]
    if args.drafter:
        dspark += ["--speculative-draft-model-path", args.drafter]
    return {
        "no-spec": common,
        "dspark-alg1": dspark + ["--dspark-policy", "alg1"],
        "dspark-static": dspark + ["--dspark-policy", "static"],
        "ngram": common + ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "8"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--drafter", default=None, help="DSpark drafter checkpoint (default: the shipped one)")
    parser.add_argument("--datasets-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--num-prompts", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--configs", default="no-spec,dspark-alg1,dspark-static,ngram")
    parser.add_argument("--out", default=str(ROOT / "benchmark" / "results" / "bench_decode.jsonl"))
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from dspark_sglang.evaluation.datasets import load_first_turns

    prompts = {name: load_first_turns(Path(args.datasets_dir) / f, args.num_prompts) for name, f in DATASETS.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    all_configs = configurations(args)
    results: dict[tuple[str, str], float] = {}
    for name in args.configs.split(","):
        log = out.parent / f"bench_decode_{name}.log"
        with server(args.model_path, all_configs[name], log) as base:
            _stream_chat(base, "Hello", 8, args.temperature)            # warm-up
            for dataset, items in prompts.items():
                runs = [_stream_chat(base, p, args.max_new_tokens, args.temperature) for p in items]
                tokens = sum(r["tokens"] for r in runs)
                decode_s = sum(r["decode_s"] for r in runs)
                row = {"config": name, "dataset": dataset, "num_prompts": len(items), "tokens": tokens,
                       "decode_tok_s": tokens / decode_s if decode_s else 0.0,
                       "mean_ttft_s": sum(r["ttft_s"] for r in runs) / len(runs), "dtype": args.dtype,
                       "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
                if name.startswith("dspark"):
                    with contextlib.suppress(Exception):
                        row["log_tail"] = [ln for ln in log.read_text().splitlines() if "dspark τ" in ln][-1][-160:]
                results[(name, dataset)] = row["decode_tok_s"]
                print(json.dumps(row), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    for (name, dataset), tok_s in results.items():
        base_tok_s = results.get(("no-spec", dataset))
        if base_tok_s:
            print(f"{name:>14} {dataset:>10}: {tok_s:7.2f} tok/s  = {tok_s / base_tok_s:.2f}x no-spec")


if __name__ == "__main__":
    main()
