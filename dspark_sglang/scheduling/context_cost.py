"""`ContextCost`: what a target forward spends on the requests' committed context, which SPS(B) omits.

SPS(B) is profiled on dummy requests of a short context (`base_context` tokens; 64 at start-up), so it
prices the linear layers and the per-layer overhead of B verify rows, but hardly any attention: a
forward's attention reads every request's committed K/V, and that cost grows with the context, not with
B. At 16 requests of ~400 tokens it is ~20 ms of a ~70 ms decode step on a 2-core CPU host
(`benchmark/kernels/bench_cpu_attention.py`), and a 6k-token coding session doubles a single request's
step. Attention over a verify window also costs more per context token than one decode row (the scores
of every row against every key: 16 requests × 400 tokens, 8 rows per request ≈ 2.5× one row), so
the cost per context token is modelled linear in the rows per request, from `per_token_one_row` at one
row to `per_token_full` at the full window of `width` rows.

The step's cost is then 1/SPS(B) + C·k(B/R), C = Σ_r max(context_r − base_context, 0), and the verify
policy and the draft gate price a step with `step_table`: the SPS table of this step's batch. A fixed
extra cost per step makes extra verify rows relatively cheaper (Θ = τ·SPS(B) gains more from a longer
accepted run when the step costs more anyway), while the row-dependent part keeps long windows at long
contexts (prompt-lookup blocks of 15 tokens) from being priced like short ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dspark_sglang.scheduling.sps import extend_table


@dataclass(frozen=True)
class ContextCost:
    """Seconds per committed context token of a request, beyond the SPS(B) table, as a function of the
    request's verify rows.

    Example:
        >>> cost = ContextCost(per_token_one_row=1e-6, per_token_full=3e-6, width=5, base_context=64)
        >>> round(cost.seconds(context_tokens=10_064 - 64, rows_per_req=1.0), 6)    # one row: 10k tokens · 1 µs
        0.01
        >>> round(cost.seconds(context_tokens=10_000, rows_per_req=3.0), 6)        # halfway to the full window
        0.02
        >>> table = torch.tensor([10.0, 10.0, 10.0, 5.0])                          # 0.1 s up to 2 rows, 0.2 s at 3
        >>> [round(x, 3) for x in cost.step_table(table, num_reqs=1, context_tokens=10_000, max_rows=3).tolist()]
        [9.091, 9.091, 8.696, 4.545]
    """

    per_token_one_row: float
    """Seconds per context token of a request that verifies one row (a decode row)."""
    per_token_full: float
    """Seconds per context token of a request that verifies the full window of `width` rows."""
    width: int
    """Rows of the full verify window (G + 1) the second figure was measured at."""
    base_context: int
    """Context tokens per request the SPS(B) profile already includes."""

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) and 0.0 <= v < 1.0 for v in (self.per_token_one_row, self.per_token_full)):
            raise ValueError(f"context cost per token must be finite seconds in [0, 1); got {self.per_token_one_row} "
                             f"(one row) and {self.per_token_full} (full window)")
        if self.width < 1 or self.base_context < 0:
            raise ValueError(f"width must be >= 1 and base_context >= 0; got {self.width}, {self.base_context}")

    @classmethod
    def none(cls) -> "ContextCost":
        """No context cost: steps are priced by SPS(B) alone (`--dspark-context-cost off`)."""
        return cls(0.0, 0.0, 1, 0)

    @property
    def is_zero(self) -> bool:
        return self.per_token_one_row == 0.0 and self.per_token_full == 0.0

    def context_tokens(self, seq_lens: list[int]) -> int:
        """C = Σ_r max(context_r − base_context, 0) over the requests' committed lengths."""
        base = self.base_context
        return sum(n - base for n in seq_lens if n > base)

    def per_token(self, rows_per_req: torch.Tensor | float) -> torch.Tensor | float:
        """k(rows): seconds per context token at `rows_per_req` verify rows (linear, clamped to [1, width])."""
        if self.width <= 1:
            return self.per_token_full if isinstance(rows_per_req, float) else \
                torch.full_like(rows_per_req, self.per_token_full)
        if isinstance(rows_per_req, torch.Tensor):
            frac = (rows_per_req.clamp(1.0, float(self.width)) - 1.0) / (self.width - 1)
        else:
            frac = (min(max(rows_per_req, 1.0), float(self.width)) - 1.0) / (self.width - 1)
        return self.per_token_one_row + (self.per_token_full - self.per_token_one_row) * frac

    def seconds(self, context_tokens: int, rows_per_req: float) -> float:
        """Context cost of a step: C tokens of context at `rows_per_req` verify rows per request."""
        return float(context_tokens * self.per_token(float(rows_per_req)))

    def step_table(self, sps_table: torch.Tensor, num_reqs: int, context_tokens: int, max_rows: int) -> torch.Tensor:
        """SPS of this step's batch: [max_rows + 1] float64, table[B] = 1 / (1/SPS(B) + C·k(B/R)), B spread
        evenly over the `num_reqs` requests (B < R priced as R), non-increasing. SPS(B) alone (cut or
        extended to max_rows) when there is no context cost or no context beyond the base."""
        table = extend_table(sps_table.double(), max_rows)[:max_rows + 1]
        if self.is_zero or context_tokens <= 0 or num_reqs <= 0:
            return table
        rows = torch.arange(table.shape[0], dtype=torch.float64).clamp(min=float(num_reqs))
        extra = context_tokens * self.per_token(rows / num_reqs)                       # [B] seconds
        return torch.cummin(1.0 / (1.0 / table + extra), 0).values

    def fixed(self) -> "ContextCost":
        """The same cost at the one-row figure for every window width (`--dspark-context-cost fixed`)."""
        return ContextCost(self.per_token_one_row, self.per_token_one_row, self.width, self.base_context)

    def to_dict(self) -> dict:
        return {"per_token_one_row": self.per_token_one_row, "per_token_full": self.per_token_full,
                "width": self.width, "base_context": self.base_context}

    @classmethod
    def from_dict(cls, values: dict) -> "ContextCost":
        """From `to_dict`'s fields; raises ValueError naming a missing or bad field."""
        try:
            return cls(float(values["per_token_one_row"]), float(values["per_token_full"]), int(values["width"]),
                       int(values["base_context"]))
        except KeyError as exc:
            raise ValueError(f"context_cost needs the field {exc.args[0]!r} (per_token_one_row, per_token_full, "
                             f"width, base_context)") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"context_cost fields must be numbers; got {values!r}") from exc
