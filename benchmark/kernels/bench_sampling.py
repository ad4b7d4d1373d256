"""Time a sampled step's token processing at serving shapes, in one run: the draws, `sample_from_probs`
(our `sample_categorical` op, inverse CDF in float64) against `torch.multinomial` (what it used before),
and the top-p / top-k filtering, `logits_to_probs` (top-C candidates) against a full sort of every row
(`logits_to_probs_full_sort`, what it did before).

    python benchmark/kernels/bench_sampling.py [--reqs 1,4,16] [--threads 2] [--iters 50]

Per request count R: the drafter's γ = 7 slots, drawn one slot at a time over its draft vocabulary
(V' = 10,603, R rows per call, 7 calls); one row per request over the target vocabulary (V = 49,152; a
plain step's next token); and for the filtering, a verify window of 8 target rows per request at T = 0.7
with top-p 0.9, then with top-k 20. Probabilities / logits are softmaxes of / N(0, 3²). Such logits are
flatter than a language model's: the 64 largest rarely hold 0.9 of the mass, so top-p widens its candidates
(to 512, 4096) — a pessimistic case for the candidate search; `bench_decode.py --top-p 0.9` measures the
served effect. Prints the median ms per step of each and the ratio old / new.
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

    from dspark_sglang.sampling import SamplingBatch, logits_to_probs, logits_to_probs_full_sort, sample_from_probs

    gen = torch.Generator().manual_seed(0)
    rows = []
    for reqs in (int(r) for r in args.reqs.split(",")):
        for what, vocab, calls in (("drafter slots", DRAFT_VOCAB, GAMMA), ("target rows", TARGET_VOCAB, 1)):
            probs = (torch.randn(calls, reqs, vocab, generator=gen) * 3).softmax(-1)    # [calls, R, V]
            ours = 1e3 * median_seconds(lambda: [sample_from_probs(probs[c], gen) for c in range(calls)], args.iters)
            multinomial = 1e3 * median_seconds(
                lambda: [torch.multinomial(probs[c], 1, generator=gen) for c in range(calls)], args.iters)
            row = {"reqs": reqs, "work": f"draw {what}", "vocab": vocab, "new_ms": ours, "old_ms": multinomial,
                   "ratio": multinomial / ours}
            rows.append(row)
            print(json.dumps(row), flush=True)
        logits = torch.randn(reqs, 8, TARGET_VOCAB, generator=gen) * 3                      # [R, W, V]
        for what, top_k, top_p in (("top-p 0.9", 0, 0.9), ("top-k 20", 20, 1.0)):
            sampling = SamplingBatch.from_lists([0.7] * reqs, top_k=[top_k] * reqs, top_p=[top_p] * reqs)
            new = 1e3 * median_seconds(lambda: logits_to_probs(logits, sampling), max(3, args.iters // 5))
            old = 1e3 * median_seconds(lambda: logits_to_probs_full_sort(logits, sampling), max(3, args.iters // 5))
            row = {"reqs": reqs, "work": f"filter {what}", "vocab": TARGET_VOCAB, "new_ms": new, "old_ms": old,
                   "ratio": old / new}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'R':>4} {'work':>20} {'new ms':>9} {'old ms':>9} {'ratio':>7}")
    for r in rows:
        print(f"{r['reqs']:>4} {r['work']:>20} {r['new_ms']:>9.3f} {r['old_ms']:>9.3f} {r['ratio']:>6.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
