"""The CPU kernels' work sharing under a busy second core: `packed_linear` at SmolLM2-135M shapes, µs per
call with the pool (csrc/cpu/work_sharing.h) and with OpenMP's static split, on an idle host, while
`--hogs` single-threaded busy loops run (SGLang's tokenizer / detokenizer and the clients are Python
processes), and while another OpenMP engine decodes on `--threads` threads. Mean µs per call over a fixed
time (a forward pass pays the mean; OpenMP's calls are bimodal under contention). One run measures every
cell and prints openmp / pool ratios:

    python benchmark/kernels/bench_work_sharing.py --threads 2 --hogs 1

Calls under the parallel threshold (`DSPARK_CPU_LINEAR_PARALLEL_MACS`, 4 M multiply-adds) run on the calling
thread in both modes; the table says which rows are over it.
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time


SHAPES = {"qkv": (576, 960), "o_proj": (576, 576), "gate_up": (576, 3072), "down": (1536, 576),
          "lm_head": (576, 49152)}
"""name -> (in_features K, out_features N) of SmolLM2-135M's linears."""
PARALLEL_MACS = 4e6


SPIN = "while True: pass"
ENGINE = ("import torch\nfrom dspark_sglang.ops import native\nnative._C.set_work_sharing_mode('openmp')\n"
          "torch.set_num_threads({threads})\nw = torch.ops.dspark.pack_linear_weight(torch.randn(1536, 576).bfloat16())\n"
          "x = torch.randn(10, 576).bfloat16()\nwhile True: torch.ops.dspark.packed_linear(x, w, None, 1536)")
"""Another OpenMP engine decoding on the same cores (10-row MLP projections back to back)."""


@contextlib.contextmanager
def hogs(codes: list[str]):
    """One process per Python source in `codes` for the duration of the block (killed on exit, even on error)."""
    procs = [subprocess.Popen([sys.executable, "-c", code]) for code in codes]
    try:
        time.sleep(2.0 if codes else 0.0)             # let them import and get scheduled
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def measure(rows_list: list[int], seconds: float) -> dict[tuple[str, int], float]:
    """{(shape, rows): mean µs per packed_linear call over `seconds` of back-to-back calls} in the current
    work-sharing mode. The mean, not the median: under contention OpenMP's calls are bimodal (most at the idle
    speed, some stalled for milliseconds), and a forward pass pays the mean."""
    import torch
    out = {}
    for name, (k, n) in SHAPES.items():
        w = torch.ops.dspark.pack_linear_weight(torch.randn(n, k).bfloat16())
        for rows in rows_list:
            x = torch.randn(rows, k).bfloat16()
            for _ in range(5):
                torch.ops.dspark.packed_linear(x, w, None, n)
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                torch.ops.dspark.packed_linear(x, w, None, n)
                calls += 1
            out[(name, rows)] = 1e6 * (time.perf_counter() - start) / calls
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="1,8,16,48")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--hogs", type=int, default=1, help="single-threaded busy loops in the 'spin' condition")
    p.add_argument("--seconds", type=float, default=0.5, help="per cell")
    a = p.parse_args(argv)
    import torch

    from dspark_sglang.ops import native
    torch.set_num_threads(a.threads)
    rows_list = [int(r) for r in a.rows.split(",")]
    cells = {}
    conditions = {"idle": [], f"{a.hogs} spin": [SPIN] * a.hogs,
                  f"engine x{a.threads}": [ENGINE.format(threads=a.threads)]}
    for condition, codes in conditions.items():
        with hogs(codes):
            for mode in ("openmp", "pool"):
                native._C.set_work_sharing_mode(mode)
                cells[(condition, mode)] = measure(rows_list, a.seconds)
    native._C.set_work_sharing_mode("pool")
    print(f"threads {a.threads}; packed_linear bf16, mean µs per call (openmp / pool = ratio; > 1: the pool is faster)")
    print(f"{'shape':>8} {'rows':>4} {'parallel':>8} " + " ".join(f"{c + ' omp/pool':>30}" for c in conditions))
    for name, (k, n) in SHAPES.items():
        for rows in rows_list:
            par = "yes" if rows * k * n >= PARALLEL_MACS else "no"
            line = f"{name:>8} {rows:>4} {par:>8} "
            for c in conditions:
                omp, pool = cells[(c, "openmp")][(name, rows)], cells[(c, "pool")][(name, rows)]
                line += f"{f'{omp:8.0f} / {pool:6.0f} = {omp / pool:5.2f}x':>30} "
            print(line)
    for c in conditions:
        par = [(s, r) for s, (k, n) in SHAPES.items() for r in rows_list if r * k * n >= PARALLEL_MACS]
        tot_omp = sum(cells[(c, "openmp")][x] for x in par)
        tot_pool = sum(cells[(c, "pool")][x] for x in par)
        print(f"{c}: parallel calls summed {tot_omp:.0f} µs (openmp) vs {tot_pool:.0f} µs (pool) = {tot_omp / tot_pool:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
