"""SPS(B) tables (dspark_sglang.scheduling.sps)."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.scheduling.sps import extend_table, sps_lookup, sps_table_from_points


def test_interpolates_step_time_linearly():
    """Points (B=1, 0.1 s), (B=4, 0.2 s): t(2) = 0.1333 s -> SPS 7.5; t(3) = 0.1667 -> 6; t(5) = 0.2333 (extrapolated)."""
    table = sps_table_from_points([1, 4], [0.1, 0.2], 5)
    assert table.tolist() == pytest.approx([10.0, 10.0, 7.5, 6.0, 5.0, 1 / 0.23333333])


def test_running_min_makes_it_non_increasing():
    """A measurement that is faster at larger B (noise) does not make SPS rise."""
    table = sps_table_from_points([1, 2, 3], [0.2, 0.1, 0.3], 4)
    assert all(b <= a for a, b in zip(table.tolist(), table.tolist()[1:]))
    assert table[2] == pytest.approx(5.0)


def test_single_point_is_flat():
    assert sps_table_from_points([4], [0.5], 6).tolist() == [2.0] * 7


@pytest.mark.parametrize("rows,times", [([], []), ([2, 1], [0.1, 0.2]), ([1], [0.0]), ([0, 1], [0.1, 0.1])])
def test_rejects_bad_points(rows, times):
    with pytest.raises(ValueError):
        sps_table_from_points(rows, times, 4)


def test_extend_and_lookup_scale_step_time():
    table = sps_table_from_points([1, 2], [0.1, 0.2], 2)     # SPS(2) = 5
    assert sps_lookup(table, 4) == pytest.approx(2.5)
    assert extend_table(table, 4).tolist() == pytest.approx([10.0, 10.0, 5.0, 5 * 2 / 3, 2.5])
    assert extend_table(table, 1) is table
