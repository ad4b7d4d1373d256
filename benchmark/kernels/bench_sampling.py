"""Time one step's token draws: `sample_from_probs` (our `sample_categorical` op, inverse CDF in float64)
against `torch.multinomial` (what it used before), at serving shapes, in one run.

    python benchmark/kernels/bench_sampling.py [--reqs 1,4,16] [--threads 2] [--iters 50]

Per request count R, two draws a sampled DSpark step makes: the drafter's γ = 7 slots, drawn one slot at
a time over its draft vocabulary (V' = 10,603, R rows per call, 7 calls), and one row per request over
the target vocabulary (V = 49,152; a plain step's next token). Probabilities are softmaxes of N(0, 3²)
logits. Prints the median ms per step of each and the ratio multinomial / sample_categorical.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmark.common.timing import median_seconds  # noqa: E402

GAMMA, DRAFT_VOCAB, TARGET_VOCAB = 7, 10_603, 49_152


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reqs", default="1,4,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dspark_sglang.sampling import sample_from_probs

    gen = torch.Generator().manual_seed(0)
    rows = []
    for reqs in (int(r) for r in args.reqs.split(",")):
        for what, vocab, calls in (("drafter slots", DRAFT_VOCAB, GAMMA), ("target rows", TARGET_VOCAB, 1)):
            probs = (torch.randn(calls, reqs, vocab, generator=gen) * 3).softmax(-1)    # [calls, R, V]
            ours = 1e3 * median_seconds(lambda: [sample_from_probs(probs[c], gen) for c in range(calls)], args.iters)
            multinomial = 1e3 * median_seconds(
                lambda: [torch.multinomial(probs[c], 1, generator=gen) for c in range(calls)], args.iters)
            row = {"reqs": reqs, "draws": what, "vocab": vocab, "calls": calls, "sample_categorical_ms": ours,
                   "multinomial_ms": multinomial, "ratio": multinomial / ours}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'R':>4} {'draws':>14} {'ours ms':>9} {'multinomial ms':>15} {'ratio':>7}")
    for r in rows:
        print(f"{r['reqs']:>4} {r['draws']:>14} {r['sample_categorical_ms']:>9.3f} {r['multinomial_ms']:>15.3f} "
              f"{r['ratio']:>6.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
