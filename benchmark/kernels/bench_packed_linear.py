"""Time the target model's linear layers: `packed_linear` (our packed-weight kernel) against `F.linear`
(what SGLang's CPU engine calls without its sgl_kernel CPU build), at serving row counts, in one run.

    python benchmark/kernels/bench_packed_linear.py [--dtype bfloat16] [--rows 1,2,4,8,16,32,64,256] [--threads 2]
        [--max-face amx_bf16|avx512_bf16|avx512|avx2|generic]

--max-face caps packed_linear's CPU face, to time each face this CPU has in one run (F.linear's own ISA can be
capped the same way with oneDNN's ONEDNN_MAX_CPU_ISA, e.g. AVX2, to stand in for a CPU without AVX-512).

Weights: the four linear layers of every SmolLM2-135M decoder layer (qkv 960×576, o 576×576, gate_up
3072×576, down 576×1536), 30 distinct copies, so that the 212 MB (bf16) stream from memory as in a real
forward instead of sitting in the L3 cache. Per row count, the median over --iters passes of all 120 calls:
ms per forward's worth of linears, the weight bytes streamed per second, GFLOP/s and the ratio
F.linear / packed_linear. One JSON line per row count, then a table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark.common.timing import median_seconds  # noqa: E402
from dspark_sglang import ops  # noqa: E402
from dspark_sglang.ops import native  # noqa: E402

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]   # (out, in) per SmolLM2-135M layer
LAYERS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    parser.add_argument("--max-face", choices=("amx_bf16", "avx512_bf16", "avx512", "avx2", "generic"), default="amx_bf16",
                        help="the best CPU face packed_linear may run (default: the CPU's best)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native._C.set_packed_linear_max_face(args.max_face)
    dtype = getattr(torch, args.dtype)
    weights = [torch.randn(n, k, dtype=dtype) for _ in range(LAYERS) for n, k in SHAPES]
    packed = [ops.pack_linear_weight(w) for w in weights]
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    macs_per_row = sum(w.numel() for w in weights)
    print(f"# {args.dtype}, {args.threads} threads, packed_linear face: {native.packed_linear_backend(dtype)}, "
          f"calls split over threads from {native._C.packed_linear_parallel_macs():.3g} multiply-adds "
          f"(thread stream gain {native._C.thread_stream_gain():.2f}), "
          f"{weight_bytes / 1e6:.0f} MB of weights", flush=True)
    rows_out = []
    for m in (int(r) for r in args.rows.split(",")):
        xs = [torch.randn(m, k, dtype=dtype) for _, k in SHAPES]
        torch_s = median_seconds(lambda: [F.linear(xs[i % 4], w) for i, w in enumerate(weights)], args.iters)
        packed_s = median_seconds(lambda: [ops.packed_linear(xs[i % 4], p, None, SHAPES[i % 4][0])
                                           for i, p in enumerate(packed)], args.iters)
        row = {"rows": m, "dtype": args.dtype, "threads": args.threads,
               "face": native.packed_linear_backend(dtype), "f_linear_ms": torch_s * 1e3,
               "packed_ms": packed_s * 1e3, "packed_gb_s": weight_bytes / packed_s / 1e9,
               "f_linear_gb_s": weight_bytes / torch_s / 1e9, "packed_gflop_s": 2 * m * macs_per_row / packed_s / 1e9,
               "speedup": torch_s / packed_s}
        rows_out.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'rows':>5} {'F.linear ms':>12} {'packed ms':>10} {'packed GB/s':>12} {'GFLOP/s':>8} {'speedup':>8}")
    for r in rows_out:
        print(f"{r['rows']:>5} {r['f_linear_ms']:>12.1f} {r['packed_ms']:>10.1f} {r['packed_gb_s']:>12.1f} "
              f"{r['packed_gflop_s']:>8.0f} {r['speedup']:>7.2f}x")


if __name__ == "__main__":
    main()
