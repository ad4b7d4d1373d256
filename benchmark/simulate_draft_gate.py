"""Simulate the draft gate on synthetic traffic: how close it gets to the better of always-draft and
never-draft, for gate settings side by side.

Each simulated decode step has R requests; a drafted step takes `drafted_ms`, a plain one `plain_ms`
(±2 % noise); each request accepts a truncated-geometric number of drafts (0..γ) with the given
per-draft acceptance. The gate (`dspark_sglang.scheduling.draft_gate.DraftGate`) sees only what the
serving worker shows it: per step, whether it drafted, accepted / verified counts and wall time.
The printed figure per case is the gate's committed tokens per second over the better fixed choice's.

    python benchmark/simulate_draft_gate.py
    python benchmark/simulate_draft_gate.py --memory 16,64,256 --optimism 0,1,2 --steps 8000

The default cases use step times measured on the 2-core CPU host with SmolLM2-135M (bf16: plain
≈ 53 ms, drafted ≈ 70 ms at one request). The first row is the gate as it was before pooling
(g and b as per-step moving averages, decided on the mean), for comparison.
"""
from __future__ import annotations

import argparse
import random

import torch

from dspark_sglang.scheduling.draft_gate import DraftGate

# (requests per step, per-draft acceptance probability, drafted step s, plain step s)
CASES = [(1, 0.31, 0.070, 0.053), (1, 0.23, 0.070, 0.053), (1, 0.13, 0.070, 0.053),
         (4, 0.31, 0.085, 0.060), (4, 0.17, 0.085, 0.060),
         (16, 0.29, 0.120, 0.110), (16, 0.23, 0.140, 0.110), (16, 0.13, 0.140, 0.110)]
GAMMA = 4


class _EmaGate(DraftGate):
    """The gate before pooling: g and b as per-step moving averages (weight alpha), decided on the mean."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.optimism = 0.0
        self._g = self._b = None

    @property
    def accepted_per_req(self):
        return self._g

    @property
    def verified_per_req(self):
        return self._b

    def record(self, drafted, *, num_reqs, verified, accepted, num_rows, seconds, accepted_sq=None):
        if drafted:
            self._g = self._ema(self._g, accepted / num_reqs)
            self._b = self._ema(self._b, verified / num_reqs)
        super().record(drafted, num_reqs=num_reqs, verified=verified, accepted=accepted, num_rows=num_rows,
                       seconds=seconds, accepted_sq=accepted_sq)


def expected_accepted(p: float) -> float:
    """Mean of a truncated geometric count: accept draft k with prob p given drafts < k accepted."""
    return sum(p ** k for k in range(1, GAMMA + 1))


def simulate(gate: DraftGate, num_reqs: int, p: float, drafted_s: float, plain_s: float, steps: int,
             seed: int) -> float:
    """Committed tokens per second of `gate` over `steps` steps."""
    rng = random.Random(seed)
    tokens = seconds = 0.0
    for _ in range(steps):
        if gate.should_draft(num_reqs):
            counts = []
            for _ in range(num_reqs):
                k = 0
                while k < GAMMA and rng.random() < p:
                    k += 1
                counts.append(k)
            step_s = drafted_s * (1 + 0.02 * rng.gauss(0, 1))
            gate.record(True, num_reqs=num_reqs, verified=GAMMA * num_reqs, accepted=sum(counts),
                        num_rows=num_reqs, seconds=step_s, accepted_sq=sum(c * c for c in counts))
            tokens += num_reqs + sum(counts)
        else:
            step_s = plain_s * (1 + 0.02 * rng.gauss(0, 1))
            gate.record(False, num_reqs=num_reqs, verified=0, accepted=0, num_rows=num_reqs, seconds=step_s)
            tokens += num_reqs
        seconds += step_s
    return tokens / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory", default="64", help="comma list of DraftGate.memory values")
    ap.add_argument("--optimism", default="1", help="comma list of DraftGate.optimism values")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    flat = lambda plain_s: torch.full((512,), 1.0 / plain_s)     # SPS: the plain step time at any B
    settings = [("ema (before pooling)", lambda s: _EmaGate(flat(s)))]
    for mem in (float(m) for m in args.memory.split(",")):
        for opt in (float(o) for o in args.optimism.split(",")):
            settings.append((f"memory {mem:g} optimism {opt:g}",
                             lambda s, mem=mem, opt=opt: DraftGate(flat(s), memory=mem, optimism=opt)))
    header = " ".join(f"R={r:<2d} g={expected_accepted(p):.2f}" for r, p, _, _ in CASES)
    print(f"{'setting':28s} {header}   min   mean")
    for name, make in settings:
        ratios = []
        for r, p, d_s, p_s in CASES:
            best = max(r * (1 + expected_accepted(p)) / d_s, r / p_s)
            ratios.append(simulate(make(p_s), r, p, d_s, p_s, args.steps, args.seed) / best)
        print(f"{name:28s} " + " ".join(f"{x:10.3f}" for x in ratios) + f" {min(ratios):.3f} {sum(ratios) / len(ratios):.4f}")


if __name__ == "__main__":
    main()
