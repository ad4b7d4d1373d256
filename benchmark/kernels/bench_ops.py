"""Time every dspark op against its torch reference; one JSON line per op and shape.

    python benchmark/kernels/bench_ops.py [--device cpu|cuda] [--iters N]

Each line: op, device, shape, native and reference median µs, ratio (reference / native) and, for
verify_sampled, the bytes the kernel touches and its effective bandwidth. packed_linear is also timed
against F.linear on the unpacked weight and sample_categorical against torch.multinomial (the calls they
replace in the serving path). On CUDA it also measures
the device's copy bandwidth and prints verify_sampled's share of it at R=256, γ=7, V=151936.
Goals (CPU): each verify op ≥ 5× its reference at R=64, γ=7, V=49152; schedule_prefix at R=256,
γ=7 under 50 µs per call.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dspark_sglang import ops  # noqa: E402
from dspark_sglang.ops import native, reference  # noqa: E402
from test.ops.op_inputs import chain_probs, sps_table, survival, verify_lens  # noqa: E402


def median_us(fn, device: str, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    if device == "cuda":
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def copy_bandwidth_gbs(device: str, iters: int) -> float:
    """Device copy bandwidth (bytes read + written per second) of a 1 GiB clone."""
    src = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src), device, max(3, iters // 10))
    return 2 * src.numel() * 4 / (us * 1e-6) / 1e9


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def bench_verify_greedy(device, iters, num_reqs, gamma):
    draft = torch.randint(0, 2, (num_reqs, gamma), device=device)
    target = torch.randint(0, 2, (num_reqs, gamma + 1), device=device)
    lens = verify_lens(num_reqs, gamma, device)
    nat = median_us(lambda: ops.verify_greedy(draft, target, lens), device, iters)
    ref = median_us(lambda: reference.verify_greedy_ref(draft, target, lens), device, iters)
    emit(dict(op="verify_greedy", device=device, R=num_reqs, gamma=gamma, native_us=round(nat, 2),
              ref_us=round(ref, 2), ratio=round(ref / nat, 2)))


def bench_verify_sampled(device, iters, num_reqs, gamma, vocab, copy_gbs=None):
    draft, q, p = chain_probs(num_reqs, gamma, vocab, device=device)
    lens = torch.full((num_reqs,), gamma, dtype=torch.int32, device=device)
    greedy = torch.zeros(num_reqs, dtype=torch.bool, device=device)
    nat = median_us(lambda: ops.verify_sampled(draft, q, p, lens, greedy, seed=1, offset=2), device, iters)
    ref_iters = max(3, iters // 10)
    ref = median_us(lambda: reference.verify_sampled_ref(draft, q, p, lens, greedy, 1, 2), device, ref_iters)
    acc, _ = ops.verify_sampled(draft, q, p, lens, greedy, seed=1, offset=2)
    rejected = int((acc < lens).sum())
    # Bytes the kernel reads: p and q rows at each rejection, a p row per bonus, the gathers.
    touched = (rejected * 2 + (num_reqs - rejected)) * vocab * p.element_size() \
        + int((acc + 1).sum()) * 2 * p.element_size() + num_reqs * gamma * 8
    record = dict(op="verify_sampled", device=device, R=num_reqs, gamma=gamma, V=vocab, dtype=str(p.dtype),
                  native_us=round(nat, 2), ref_us=round(ref, 2), ratio=round(ref / nat, 2),
                  mean_accepted=round(float(acc.float().mean()), 3), touched_MB=round(touched / 1e6, 2),
                  effective_GBs=round(touched / (nat * 1e-6) / 1e9, 2))
    if copy_gbs:
        record.update(copy_GBs=round(copy_gbs, 1), share_of_copy=round(record["effective_GBs"] / copy_gbs, 3))
    emit(record)


def bench_confidence_survival(device, iters, num_reqs, gamma):
    logits = torch.randn(num_reqs, gamma, device=device)
    temps = torch.rand(gamma, device=device) + 0.5
    nat = median_us(lambda: ops.confidence_survival(logits, temps, 0.5), device, iters)
    ref = median_us(lambda: reference.confidence_survival_ref(logits, temps, 0.5), device, iters)
    emit(dict(op="confidence_survival", device=device, R=num_reqs, gamma=gamma, native_us=round(nat, 2),
              ref_us=round(ref, 2), ratio=round(ref / nat, 2)))


def bench_schedulers(device, iters, num_reqs, gamma):
    surv = survival(num_reqs, gamma, device)
    table = sps_table(num_reqs * (gamma + 1) + 1, device=device)
    for mode in ("early_stop", "global"):
        nat = median_us(lambda: ops.schedule_prefix(surv, table, 0, gamma, mode), device, iters)
        ref = median_us(lambda: reference.schedule_prefix_ref(surv, table, 0, gamma, mode), device, iters)
        emit(dict(op="schedule_prefix", mode=mode, device=device, R=num_reqs, gamma=gamma, native_us=round(nat, 2),
                  ref_us=round(ref, 2), ratio=round(ref / nat, 2), goal_us=50 if device == "cpu" else None))
    budget = num_reqs * 3
    nat = median_us(lambda: ops.schedule_topk(surv, budget, 0, gamma), device, iters)
    ref = median_us(lambda: reference.schedule_topk_ref(surv, budget, 0, gamma), device, iters)
    emit(dict(op="schedule_topk", device=device, R=num_reqs, gamma=gamma, native_us=round(nat, 2),
              ref_us=round(ref, 2), ratio=round(ref / nat, 2)))


def bench_sample_categorical(device, iters, rows, vocab):
    probs = torch.softmax(torch.randn(rows, vocab, device=device) * 3, dim=-1)        # [rows, V]
    uniforms = torch.rand(rows, dtype=torch.float64, device=device)                    # [rows]
    nat = median_us(lambda: ops.sample_categorical(probs, uniforms), device, iters)
    ref = median_us(lambda: reference.sample_categorical_ref(probs, uniforms), device, iters)
    mult = median_us(lambda: torch.multinomial(probs, 1), device, iters)
    emit(dict(op="sample_categorical", device=device, rows=rows, V=vocab, native_us=round(nat, 2),
              ref_us=round(ref, 2), ratio=round(ref / nat, 2), multinomial_us=round(mult, 2),
              vs_multinomial=round(mult / nat, 2)))


def bench_packed_linear(device, iters, rows, out_features, in_features, dtype=torch.bfloat16):
    weight = torch.randn(out_features, in_features, device=device, dtype=dtype) / in_features ** 0.5   # [N, K]
    packed = ops.pack_linear_weight(weight)
    x = torch.randn(rows, in_features, device=device, dtype=dtype)                    # [M, K]
    nat = median_us(lambda: ops.packed_linear(x, packed, None, out_features), device, iters)
    ref = median_us(lambda: reference.packed_linear_ref(x, packed, None, out_features), device, max(3, iters // 10))
    lin = median_us(lambda: torch.nn.functional.linear(x, weight), device, iters)
    emit(dict(op="packed_linear", device=device, M=rows, N=out_features, K=in_features, dtype=str(dtype),
              native_us=round(nat, 2), ref_us=round(ref, 2), ratio=round(ref / nat, 2), f_linear_us=round(lin, 2),
              vs_f_linear=round(lin / nat, 2),
              weight_GBs=round(weight.numel() * weight.element_size() / (nat * 1e-6) / 1e9, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    for name in native.OP_NAMES:
        if not native.has_kernel(name, args.device):
            sys.exit(f"native op {name} has no {args.device} kernel: build the extension first")
    torch.manual_seed(0)
    emit(dict(device=args.device, torch=torch.__version__, threads=torch.get_num_threads(),
              gpu=torch.cuda.get_device_name() if args.device == "cuda" else None))
    bench_verify_greedy(args.device, args.iters, 64, 7)
    bench_verify_greedy(args.device, args.iters, 256, 7)
    bench_verify_sampled(args.device, args.iters, 64, 7, 49152)
    if args.device == "cuda":
        bench_verify_sampled(args.device, args.iters, 256, 7, 151936, copy_gbs=copy_bandwidth_gbs("cuda", args.iters))
    bench_confidence_survival(args.device, args.iters, 64, 7)
    bench_confidence_survival(args.device, args.iters, 256, 7)
    bench_schedulers(args.device, args.iters, 64, 7)
    bench_schedulers(args.device, args.iters, 256, 7)
    for rows in (1, 64):
        bench_sample_categorical(args.device, args.iters, rows, 49152)
    # SmolLM2-135M shapes: the MLP's gate/up (1536 x 576) and the lm_head (49152 x 576).
    for rows in (1, 8, 64):
        bench_packed_linear(args.device, args.iters, rows, 1536, 576)
        bench_packed_linear(args.device, args.iters, rows, 49152, 576)


if __name__ == "__main__":
    main()
