"""The CPU engine's fused layer ops (`rmsnorm_cpu`, `fused_add_rmsnorm_cpu`, `silu_and_mul_cpu`,
`rotary_embedding_cpu`) at SmolLM2-135M shapes over the row counts a step runs: 1 (one decode request),
16 (a decode step of 16), 32-64 (verify windows), 250 (a prefill chunk). Median µs per call.

With `--compare-ext OLD.so` the same table is measured for another build of the extension (in its own
process, since both register the same ops) and the ratio old / this build is printed — e.g. the op
build before a change to its parallel grain:

    python benchmark/kernels/bench_fused_layers.py --threads 2 --compare-ext /tmp/old_C.so
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmark.common.timing import median_seconds  # noqa: E402

CALLS_PER_SAMPLE = 20
"""Calls timed together per sample (one call is a few µs)."""
HIDDEN, INTERMEDIATE, Q_HEADS, KV_HEADS, HEAD = 576, 1536, 9, 3, 64


def measure(ext: str | None, rows_list: list[int], threads: int, iters: int) -> dict[str, dict[int, float]]:
    """{op: {rows: median µs}} with the ops of `ext` (a built _C .so) or of the installed package."""
    import torch
    torch.set_num_threads(threads)
    if ext:
        torch.ops.load_library(ext)
    else:
        from dspark_sglang.serving.cpu_host import sgl_kernel_ops
        sgl_kernel_ops.load()
    ops = torch.ops.sgl_kernel
    out: dict[str, dict[int, float]] = {"add_rmsnorm": {}, "rmsnorm": {}, "silu_and_mul": {}, "rotary": {}}
    cache = torch.randn(8192, HEAD, dtype=torch.bfloat16)
    for rows in rows_list:
        x = torch.randn(rows, HIDDEN, dtype=torch.bfloat16)
        res = torch.randn_like(x)
        w = torch.ones(HIDDEN, dtype=torch.bfloat16)
        gate_up = torch.randn(rows, 2 * INTERMEDIATE, dtype=torch.bfloat16)
        q = torch.randn(rows, Q_HEADS * HEAD, dtype=torch.bfloat16)
        k = torch.randn(rows, KV_HEADS * HEAD, dtype=torch.bfloat16)
        pos = torch.arange(rows) + 100
        calls = {"add_rmsnorm": lambda: ops.fused_add_rmsnorm_cpu(x, res, w, 1e-5),
                 "rmsnorm": lambda: ops.rmsnorm_cpu(x, w, 1e-5),
                 "silu_and_mul": lambda: ops.silu_and_mul_cpu(gate_up),
                 "rotary": lambda: ops.rotary_embedding_cpu(pos, q, k, HEAD, cache, True)}
        for name, call in calls.items():
            batch = lambda: [call() for _ in range(CALLS_PER_SAMPLE)]      # noqa: E731
            out[name][rows] = 1e6 * median_seconds(batch, iters) / CALLS_PER_SAMPLE
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,16,32,48,64,128,250")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--ext", default=None, help="a built extension .so to load instead of the package's")
    p.add_argument("--compare-ext", default=None, help="another build, measured in its own process")
    p.add_argument("--json", action="store_true", help="print the table as JSON only (used for --compare-ext)")
    a = p.parse_args(argv)
    rows_list = [int(r) for r in a.rows.split(",")]
    this = measure(a.ext, rows_list, a.threads, a.iters)
    if a.json:
        print(json.dumps(this))
        return 0
    other = None
    if a.compare_ext:
        cmd = [sys.executable, __file__, "--rows", a.rows, "--threads", str(a.threads), "--iters", str(a.iters),
               "--ext", a.compare_ext, "--json"]
        other = {op: {int(r): v for r, v in by.items()}
                 for op, by in json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout).items()}
    print(f"threads {a.threads}; median µs per call" + (f"; old = {a.compare_ext}" if other else ""))
    print(f"{'op':>14} " + " ".join(f"{r:>14}" for r in rows_list))
    for op, by in this.items():
        cells = [f"{by[r]:6.1f}" + (f" ({other[op][r] / by[r]:4.2f}x)" if other else "       ") for r in rows_list]
        print(f"{op:>14} " + " ".join(f"{c:>14}" for c in cells))
    if other:
        print("(ratio = old build's time / this build's time; > 1: this build is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
