"""Time the CPU attention ops SGLang's CPU engine calls through our extension, at serving shapes.

    python benchmark/kernels/bench_cpu_attention.py [--iters N] [--contexts 512,2048,5120] [--batches 1,8]

One JSON line per (op, batch, context, rows): the verify-window extend (`extend_attention_cpu`, causal,
ℓ+1 ≤ 8 query rows per request, the DSPARK / DFlash verify forward), the same with a draft-tree mask
(`tree_us`: how NGRAM / EAGLE verify), the one-row decode
(`decode_attention_cpu`, what a plain step costs) and a torch reference (SDPA over the gathered keys, what
the op would cost as ATen calls), with median µs per call of ONE layer and the ratios
`extend_vs_decode` (a verify window of `rows` tokens against one decode row: the attention share of
"a verify row costs what a decode row costs") and `ref_vs_extend` (reference / native); then one causal prefill chunk (`--prefill context:chunk`).

Shapes default to SmolLM2-135M (9 query heads, 3 KV heads, head_dim 64), bf16 KV pool, slots allocated
consecutively per request as SGLang does.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import dspark_sglang._C  # noqa: E402,F401  (registers the sgl_kernel ops)

ops = torch.ops.sgl_kernel


def median_us(fn, iters: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def make_case(batch: int, context: int, rows: int, heads: int, kv_heads: int, head_dim: int, dtype):
    """A KV pool holding `batch` requests of `context` committed tokens + `rows` fresh ones each."""
    seq = context + rows
    pool = batch * seq + 1
    k_buf = torch.randn(pool, kv_heads, head_dim).to(dtype)                   # [pool, HK, D]
    v_buf = torch.randn(pool, kv_heads, head_dim).to(dtype)
    table = torch.zeros(batch, seq, dtype=torch.int32)                        # req_to_token
    for b in range(batch):
        table[b] = torch.arange(b * seq, (b + 1) * seq, dtype=torch.int32) + 1
    q = torch.randn(batch * rows, heads, head_dim).to(dtype)                  # [Σ rows, H, D]
    return k_buf, v_buf, table, q


def bench(batch, context, rows, args) -> dict:
    heads, kv_heads, head_dim = args.heads, args.kv_heads, args.head_dim
    dtype = getattr(torch, args.dtype)
    k_buf, v_buf, table, q = make_case(batch, context, rows, heads, kv_heads, head_dim, dtype)
    seq = context + rows
    scale = head_dim ** -0.5
    idx = torch.arange(batch)
    seq_lens = torch.full((batch,), seq, dtype=torch.int64)
    ext_lens = torch.full((batch,), rows, dtype=torch.int64)
    starts = torch.arange(batch, dtype=torch.int64) * rows
    out = torch.empty(batch * rows, heads, head_dim, dtype=dtype)

    def extend():
        ops.extend_attention_cpu(q, None, None, out, k_buf, v_buf, 1.0, 1.0, table, idx, seq_lens, ext_lens,
                                 starts, rows, scale, 0.0, False, -1, None, None, None, True)

    tree = torch.ones(batch, rows, rows, dtype=torch.bool).tril().reshape(-1)    # a chain: causal as a tree mask

    def extend_tree():
        ops.extend_attention_cpu(q, None, None, out, k_buf, v_buf, 1.0, 1.0, table, idx, seq_lens, ext_lens,
                                 starts, rows, scale, 0.0, False, -1, None, None, tree, True)

    q1 = torch.randn(batch, heads, head_dim).to(dtype)
    out1 = torch.empty(batch, heads, head_dim, dtype=dtype)
    scratch = torch.empty(0)

    def decode():
        ops.decode_attention_cpu(q1, k_buf, v_buf, 1.0, 1.0, out1, None, None, table[:, -1].long(), scratch, table,
                                 idx, torch.full((batch,), seq, dtype=torch.int64), scale, 0.0, False, -1, None, None)

    causal = torch.ones(rows, seq, dtype=torch.bool).tril(diagonal=context)  # [rows, seq]

    def reference():
        for b in range(batch):
            keys = table[b].long()
            k = k_buf[keys].float().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)   # [H, seq, D]
            v = v_buf[keys].float().transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
            qb = q[b * rows:(b + 1) * rows].float().transpose(0, 1)                           # [H, rows, D]
            F.scaled_dot_product_attention(qb, k, v, attn_mask=causal, scale=scale)

    ext_us, dec_us, tree_us = median_us(extend, args.iters), median_us(decode, args.iters), median_us(extend_tree, args.iters)
    ref_us = median_us(reference, max(3, args.iters // 4))
    return {"batch": batch, "context": context, "rows": rows, "dtype": args.dtype, "threads": torch.get_num_threads(),
            "extend_us": round(ext_us, 1), "tree_us": round(tree_us, 1), "decode_us": round(dec_us, 1), "reference_us": round(ref_us, 1),
            "extend_vs_decode": round(ext_us / dec_us, 2), "ref_vs_extend": round(ref_us / ext_us, 2)}


def bench_prefill(context: int, chunk: int, args) -> dict:
    """One causal extend of `chunk` new tokens after `context` cached ones (a prefill chunk), one layer."""
    heads, kv_heads, head_dim = args.heads, args.kv_heads, args.head_dim
    dtype = getattr(torch, args.dtype)
    k_buf, v_buf, table, q = make_case(1, context, chunk, heads, kv_heads, head_dim, dtype)
    k_ext = torch.randn(chunk, kv_heads * head_dim).to(dtype)
    v_ext = torch.randn(chunk, kv_heads * head_dim).to(dtype)
    out = torch.empty(chunk, heads, head_dim, dtype=dtype)
    seq = torch.tensor([context + chunk])

    def extend():
        ops.extend_attention_cpu(q, k_ext, v_ext, out, k_buf, v_buf, 1.0, 1.0, table, torch.arange(1), seq,
                                 torch.tensor([chunk]), torch.tensor([0]), chunk, head_dim ** -0.5, 0.0, False, -1,
                                 None, None, None, True)

    return {"prefill_context": context, "chunk": chunk, "dtype": args.dtype, "threads": torch.get_num_threads(),
            "extend_us": round(median_us(extend, max(3, args.iters // 5)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--contexts", default="512,2048,5120")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rows", default="4,8", help="verify rows per request (ℓ + 1)")
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--prefill", default="0:1024,3072:1024",
                        help="context:chunk pairs timed as one prefill chunk each ('' to skip)")
    args = parser.parse_args()
    torch.manual_seed(0)
    for batch in map(int, args.batches.split(",")):
        for context in map(int, args.contexts.split(",")):
            for rows in map(int, args.rows.split(",")):
                print(json.dumps(bench(batch, context, rows, args)), flush=True)
    for pair in filter(None, args.prefill.split(",")):
        context, chunk = map(int, pair.split(":"))
        print(json.dumps(bench_prefill(context, chunk, args)), flush=True)


if __name__ == "__main__":
    main()
