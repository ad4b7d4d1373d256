"""The CPU kernels' work-sharing pool (csrc/cpu/work_sharing.h): every index runs exactly once, helpers
join, errors and nested calls are safe, and a kernel gives the same bits with the pool and with OpenMP."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
import torch

from dspark_sglang.ops import native
from dspark_sglang.ops.reference import packed_linear_ref

C = native._C


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def mode(name: str):
    old = C.work_sharing_mode()
    C.set_work_sharing_mode(name)
    try:
        yield
    finally:
        C.set_work_sharing_mode(old)


@pytest.mark.parametrize("n,grain", [(1, 1), (5, 8), (37, 4), (64, 1), (1000, 1), (1001, 7)])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_every_index_runs_exactly_once(n, grain, num_threads):
    with threads(num_threads):
        hits = C.work_sharing_coverage(n, grain)
    assert hits[:-1] == [1] * n


def test_helpers_join_when_threads_allow():
    """16 chunks of 3 ms: a helper has time to wake up and claim some of them."""
    with threads(2):
        used = C.work_sharing_coverage(16, 1, chunk_us=3000)[-1]
    assert used == 2 and C.work_sharing_helpers() >= 1
    with threads(1):
        assert C.work_sharing_coverage(16, 1, chunk_us=1000)[-1] == 1


def test_a_chunk_error_is_raised_and_the_pool_keeps_working():
    with threads(2):
        with pytest.raises(RuntimeError, match="chunk throws at 57"):
            C.work_sharing_coverage(100, 1, throw_at=57)
        assert C.work_sharing_coverage(100, 1)[:-1] == [1] * 100


def test_nested_calls_run_serially_inside_a_chunk():
    with threads(2):
        assert C.work_sharing_coverage(50, 1, chunk_us=200, nested=True)[:-1] == [4] * 50


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_packed_linear_same_bits_with_pool_and_openmp(dtype):
    """48 x 576 -> 1536 (42 M multiply-adds, over the parallel threshold): each column block is computed by
    one thread in the same order whichever thread it is, so both modes give identical bits."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(1536, 576, generator=g).to(dtype)
    x = torch.randn(48, 576, generator=g).to(dtype)
    packed = torch.ops.dspark.pack_linear_weight(w)
    with threads(2):
        with mode("pool"):
            y_pool = torch.ops.dspark.packed_linear(x, packed, None, 1536)
        with mode("openmp"):
            y_omp = torch.ops.dspark.packed_linear(x, packed, None, 1536)
    assert torch.equal(y_pool, y_omp)
    tol = dict(rtol=1e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y_pool.float(), packed_linear_ref(x, packed, None, 1536).float(), **tol)


def test_mode_names_are_checked():
    with pytest.raises(ValueError, match="DSPARK_CPU_WORK_SHARING must be 'pool' or 'openmp'"):
        C.set_work_sharing_mode("tbb")
    assert C.work_sharing_mode() in ("pool", "openmp")


@pytest.mark.parametrize("value,expect", [("openmp", "openmp"), ("pool", "pool"), ("", "pool"), ("fast", "error")])
def test_environment_sets_the_mode_at_load(value, expect):
    code = ("from dspark_sglang.ops import native\n"
            "try:\n    print(native._C.work_sharing_mode())\n"
            "except ValueError as e:\n    print('error', e)\n")
    env = dict(os.environ, DSPARK_CPU_WORK_SHARING=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == expect
    if expect == "error":
        assert "DSPARK_CPU_WORK_SHARING must be 'pool' or 'openmp'; got 'fast'" in out
