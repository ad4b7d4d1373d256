"""SPS(B) tables: target verify steps per second as a function of B, the number of verify rows.

A profile measures step times at a few B values; `sps_table_from_points` interpolates them linearly
in step time (not in SPS), extrapolates linearly past the last point, and makes SPS non-increasing
in B by a running minimum (a bigger verify is never assumed faster, DSpark §3.2.2).
"""
from __future__ import annotations

import torch


def sps_table_from_points(batch_rows: list[int], step_seconds: list[float], max_rows: int) -> torch.Tensor:
    """Dense SPS table from measured (B, step time) points.

    Args:
        batch_rows:   measured B values (verify rows), strictly increasing, >= 1.
        step_seconds: measured median step time at each B, > 0.
        max_rows:     largest B the table must cover.

    Returns:
        [max_rows + 1] float64: table[B] = 1 / step_time(B); table[0] = table[1]. Non-increasing.

    Example:
        >>> [round(x, 3) for x in sps_table_from_points([1, 4], [0.1, 0.2], 5).tolist()]
        [10.0, 10.0, 7.5, 6.0, 5.0, 4.286]
    """
    if len(batch_rows) != len(step_seconds) or not batch_rows:
        raise ValueError(f"need matching, non-empty batch_rows and step_seconds; got {len(batch_rows)} and "
                         f"{len(step_seconds)}")
    if any(b2 <= b1 for b1, b2 in zip(batch_rows, batch_rows[1:])) or batch_rows[0] < 1:
        raise ValueError(f"batch_rows must be strictly increasing and >= 1; got {batch_rows}")
    if any(not t > 0 for t in step_seconds):
        raise ValueError(f"step_seconds must be > 0; got {step_seconds}")
    xs = torch.tensor(batch_rows, dtype=torch.float64)
    ts = torch.tensor(step_seconds, dtype=torch.float64)
    # Monotone step time first: a larger B never takes less time than a smaller one.
    ts = torch.cummax(ts, 0).values
    grid = torch.arange(0, max_rows + 1, dtype=torch.float64).clamp(min=float(batch_rows[0]))
    if len(batch_rows) == 1:
        times = ts.expand_as(grid).clone()
    else:
        idx = torch.searchsorted(xs, grid, right=True).clamp(1, len(batch_rows) - 1)   # segment end
        x0, x1, t0, t1 = xs[idx - 1], xs[idx], ts[idx - 1], ts[idx]
        times = t0 + (grid - x0) * (t1 - t0) / (x1 - x0)                              # extrapolates past the end
        times = torch.maximum(times, ts[0])
    sps = 1.0 / times
    return torch.cummin(sps, 0).values


def sps_lookup(table: torch.Tensor, rows: int) -> float:
    """SPS(B) for B = rows; past the table, scales the last step time linearly (B/B_max)."""
    last = table.shape[0] - 1
    if rows <= last:
        return float(table[rows])
    return float(table[last]) * last / rows


def extend_table(table: torch.Tensor, max_rows: int) -> torch.Tensor:
    """The table extended (by `sps_lookup`'s linear rule) to cover B up to max_rows."""
    last = table.shape[0] - 1
    if max_rows <= last:
        return table
    extra = torch.arange(last + 1, max_rows + 1, dtype=torch.float64)
    return torch.cat([table, table[last].double() * last / extra])
