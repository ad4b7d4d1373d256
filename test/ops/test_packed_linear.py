"""pack_linear_weight / packed_linear: native vs reference parity, layout, batch invariance, errors."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.library import opcheck

from dspark_sglang.ops import native
from dspark_sglang.ops.reference import pack_linear_weight_ref, packed_linear_ref, unpack_linear_weight_ref
from test.conftest import DEVICES

DTYPES = [torch.bfloat16, torch.float32]
SHAPES = [(1, 576, 576), (7, 960, 576), (13, 50, 33), (6, 17, 1536), (53, 3072, 64), (0, 32, 32)]   # (M, N, K)


FACES = ("generic", "avx2", "avx512", "avx512_bf16", "amx_bf16")   # worst to best


@contextlib.contextmanager
def max_face(name: str):
    """Let packed_linear's CPU face be at best `name` (the generic loop, or a vector face below the CPU's best)."""
    native._C.set_packed_linear_max_face(name)
    try:
        yield
    finally:
        native._C.set_packed_linear_max_face(FACES[-1])


def _cpu_flags() -> set[str]:
    import os
    if not os.path.exists("/proc/cpuinfo"):
        return set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _best_face(dtype) -> str:
    """The face this CPU's flags allow for `dtype`, read independently of the extension."""
    flags = _cpu_flags()
    avx512_bf16 = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"}
    if dtype == torch.bfloat16 and avx512_bf16 | {"amx_tile", "amx_bf16"} <= flags:
        return "amx_bf16"
    if dtype == torch.bfloat16 and avx512_bf16 <= flags:
        return "avx512_bf16"
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "generic"


def _skip_unless_face_here(face: str, dtype) -> None:
    if face in ("avx512_bf16", "amx_bf16") and dtype != torch.bfloat16:
        pytest.skip(f"{face} is a bf16-only face")
    if face not in _faces_here(dtype):
        pytest.skip(f"this CPU has no {face} face")


def _faces_here(dtype) -> list[str]:
    """Every face packed_linear can run for `dtype` on this CPU (the generic loop included)."""
    return list(FACES[:FACES.index(_best_face(dtype)) + 1])


def _inputs(m, n, k, dtype, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).to(device=device, dtype=dtype)
    x = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=g).to(device=device, dtype=dtype) if bias else None
    return x, w, b


def _close(y, ref, dtype):
    # one bf16 rounding of the output (2^-8 relative) plus fp32 reordering over K
    tol = dict(rtol=1e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y.float(), ref.float(), **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(16, 2), (17, 3), (960, 576), (5, 1)])
def test_pack_matches_reference_layout(dtype, n, k):
    w = torch.randn(n, k).to(dtype)
    packed = torch.ops.dspark.pack_linear_weight(w)
    assert torch.equal(packed, pack_linear_weight_ref(w))
    assert torch.equal(unpack_linear_weight_ref(packed, n, k), w)


def test_pack_layout_by_hand():
    """bf16 [2, 4] -> [16, 4]: row b·16+j of the packed memory read as [1, 2, 16, 2] is (W[j, 2q], W[j, 2q+1])."""
    w = torch.arange(8, dtype=torch.float32).reshape(2, 4).to(torch.bfloat16)
    flat = torch.ops.dspark.pack_linear_weight(w).reshape(1, 2, 16, 2)
    assert flat[0, 0, 0].tolist() == [0, 1] and flat[0, 1, 0].tolist() == [2, 3]
    assert flat[0, 0, 1].tolist() == [4, 5] and flat[0, 1, 1].tolist() == [6, 7]
    assert flat[0, :, 2:].abs().sum() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_reference(device, dtype, m, n, k, bias):
    assert native.has_kernel("packed_linear", device)
    x, w, b = _inputs(m, n, k, dtype, device, bias)
    packed = torch.ops.dspark.pack_linear_weight(w)
    y = torch.ops.dspark.packed_linear(x, packed, b, n)
    assert y.shape == (m, n) and y.dtype == dtype and y.device == x.device
    _close(y, packed_linear_ref(x, packed, b, n), dtype)
    if (m, n, k) == (13, 50, 33) and bias:
        opcheck(torch.ops.dspark.packed_linear.default, (x, packed, b, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_each_face_matches_reference(dtype, face, m, n, k):
    _skip_unless_face_here(face, dtype)
    x, w, b = _inputs(m, n, k, dtype, "cpu")
    packed = torch.ops.dspark.pack_linear_weight(w)
    with max_face(face):
        assert native.packed_linear_backend(dtype) == face
        y = torch.ops.dspark.packed_linear(x, packed, b, n)
    _close(y, packed_linear_ref(x, packed, b, n), dtype)


@pytest.mark.parametrize("face", ["avx2", "avx512"])
@pytest.mark.parametrize("m,n,k", SHAPES + [(9, 200, 577)])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_widening_faces_equal_the_generic_loop_bit_for_bit(face, m, n, k, bias):
    """bf16 weights widened to float32 in registers: the generic loop's accumulation order, exact products."""
    _skip_unless_face_here(face, torch.bfloat16)
    x, w, b = _inputs(m, n, k, torch.bfloat16, "cpu", bias, seed=3)
    x[0:1, :3] = torch.tensor([1e30, -1e-30, 0.0])          # large, tiny and zero inputs
    packed = torch.ops.dspark.pack_linear_weight(w)
    with max_face("generic"):
        generic = torch.ops.dspark.packed_linear(x, packed, b, n)
    with max_face(face):
        assert native.packed_linear_backend(torch.bfloat16) == face
        widened = torch.ops.dspark.packed_linear(x, packed, b, n)
    assert torch.equal(widened.view(torch.int16), generic.view(torch.int16))


@pytest.mark.parametrize("dtype", DTYPES)
def test_is_fast_on_every_vector_face_only(dtype):
    """The serving code packs a model's weights exactly where a vector face runs (never on the generic loop)."""
    for face in _faces_here(dtype):
        with max_face(face):
            assert native.packed_linear_is_fast(dtype, torch.device("cpu")) == (face != "generic"), face
    assert not native.packed_linear_is_fast(dtype, torch.device("cuda"))


def _run_fresh(code: str, **env: str):
    """`code` in a new interpreter, with `env` over this one's (less the packed_linear variables)."""
    import os
    import subprocess
    import sys
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("DSPARK_CPU_LINEAR_PARALLEL_MACS", "DSPARK_CPU_LINEAR_MAX_FACE")} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def _in_fresh_interpreter(code: str, **env: str) -> str:
    r = _run_fresh(code, **env)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_thread_split_size_follows_the_measured_stream_gain():
    """Calls split over threads from 2.5e5 multiply-adds where a second thread adds >= 30 % to one thread's
    memory stream, from 4e6 elsewhere; one intra-op thread measures no gain."""
    code = ("import torch; torch.set_num_threads({n}); from dspark_sglang.ops import native; "
            "print(native._C.thread_stream_gain(), native._C.packed_linear_parallel_macs())")
    gain, macs = map(float, _in_fresh_interpreter(code.format(n=2)).split())
    assert gain > 0.5 and macs == (2.5e5 if gain >= 1.3 else 4e6)
    assert _in_fresh_interpreter(code.format(n=1)) == "1.0 4000000.0"


def test_max_face_from_the_environment():
    """DSPARK_CPU_LINEAR_MAX_FACE caps the face for the process; an unknown name fails at import, naming it."""
    code = "import torch; from dspark_sglang.ops import native; print(native.packed_linear_backend(torch.bfloat16))"
    assert _in_fresh_interpreter(code, DSPARK_CPU_LINEAR_MAX_FACE="generic") == "generic"
    r = _run_fresh(code, DSPARK_CPU_LINEAR_MAX_FACE="avx1024")
    assert r.returncode != 0
    assert "DSPARK_CPU_LINEAR_MAX_FACE='avx1024': dspark.set_packed_linear_max_face: name must be one of" in r.stderr


def test_thread_split_size_from_the_environment():
    code = "from dspark_sglang.ops import native; print(native._C.packed_linear_parallel_macs())"
    assert _in_fresh_interpreter(code, DSPARK_CPU_LINEAR_PARALLEL_MACS="123") == "123.0"


@pytest.mark.parametrize("m", [1, 7, 16, 37, 300])
def test_amx_face_runs_the_tiles_where_in_features_is_a_multiple_of_32(m):
    """The AMX face really ran (its call counter moves) for K % 32 == 0, in full 16-row tiles and a tail; a
    weight with another K runs avx512_bf16 (the counter stays) and still matches the reference."""
    _skip_unless_face_here("amx_bf16", torch.bfloat16)
    for k, tiles in ((576, True), (1536, True), (33, False), (48, False)):
        x, w, b = _inputs(m, 70, k, torch.bfloat16, "cpu", seed=k)
        packed = torch.ops.dspark.pack_linear_weight(w)
        before = native._C.packed_linear_amx_calls()
        y = torch.ops.dspark.packed_linear(x, packed, b, 70)
        assert native._C.packed_linear_amx_calls() == before + int(tiles), k
        _close(y, packed_linear_ref(x, packed, b, 70), torch.bfloat16)
        for row in {0, m // 2, m - 1}:   # 2 × 2 tile pairs, single tiles and tail rows keep a row's bits
            assert torch.equal(torch.ops.dspark.packed_linear(x[row:row + 1], packed, b, 70)[0], y[row]), (k, row)


def test_max_face_refuses_unknown_names():
    with pytest.raises(RuntimeError,
                       match=r"name must be one of generic, avx2, avx512, avx512_bf16, amx_bf16; got 'sse'"):
        native._C.set_packed_linear_max_face("sse")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("face", FACES)
def test_rows_are_batch_invariant(device, dtype, face):
    """A row's output is bit-identical alone, in a full tile, or in a tail tile (decode row == verify row)."""
    if device != "cpu" and face != FACES[-1]:
        pytest.skip("the CPU faces are chosen on the CPU only")
    if device == "cpu":
        _skip_unless_face_here(face, dtype)
    x, w, b = _inputs(23, 200, 576, dtype, device)
    packed = torch.ops.dspark.pack_linear_weight(w)
    with max_face(face):
        full = torch.ops.dspark.packed_linear(x, packed, b, 200)
        for row in (0, 3, 5, 6, 22):
            alone = torch.ops.dspark.packed_linear(x[row:row + 1], packed, b, 200)
            assert torch.equal(alone[0], full[row])
        assert torch.equal(torch.ops.dspark.packed_linear(x[3:11], packed, b, 200), full[3:11])


def test_non_contiguous_x():
    x, w, b = _inputs(9, 48, 64, torch.bfloat16, "cpu")
    wide = torch.cat([x, x], dim=1)[:, ::2]                # stride 2 along K
    packed = torch.ops.dspark.pack_linear_weight(w)
    _close(torch.ops.dspark.packed_linear(wide, packed, b, 48), packed_linear_ref(wide.contiguous(), packed, b, 48),
           torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_errors_name_the_argument(device):
    x, w, b = _inputs(4, 32, 64, torch.bfloat16, device)
    packed = torch.ops.dspark.pack_linear_weight(w)
    with pytest.raises(RuntimeError, match=r"packed must have x's dtype"):
        torch.ops.dspark.packed_linear(x.float(), packed, None, 32)
    with pytest.raises(RuntimeError, match=r"packed.size\(0\) must be out_features = 40 rounded up"):
        torch.ops.dspark.packed_linear(x, packed, None, 40)
    with pytest.raises(RuntimeError, match=r"packed.size\(1\) must be x.size\(1\) = 62"):
        torch.ops.dspark.packed_linear(x[:, :62], packed, None, 32)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[32\] \(out_features\); got \[31\]"):
        torch.ops.dspark.packed_linear(x, packed, b[:31], 32)
    with pytest.raises(RuntimeError, match=r"x must be bfloat16 or float32"):
        torch.ops.dspark.packed_linear(x.half(), packed.half(), None, 32)
    with pytest.raises(RuntimeError, match=r"weight must be bfloat16 or float32"):
        torch.ops.dspark.pack_linear_weight(w.half())
    with pytest.raises(RuntimeError, match=r"x must be 2-D"):
        torch.ops.dspark.packed_linear(x[None], packed, None, 32)
