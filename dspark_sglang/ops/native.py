"""Loads the native extension `dspark_sglang._C` and reports which ops it registered."""
from __future__ import annotations

import os

import torch

try:
    from dspark_sglang import _C  # noqa: F401  (registers torch.ops.dspark.*)
    LOAD_ERROR: Exception | None = None
except ImportError as exc:  # a source checkout that was never built
    _C = None
    LOAD_ERROR = exc

MAX_FACE_ENV = "DSPARK_CPU_LINEAR_MAX_FACE"
"""Caps packed_linear's CPU face for the whole process (e.g. `avx512_bf16` on an AMX host, to compare the two
or to keep one host family's bits); unset = the best face this CPU has."""


def apply_max_face_env() -> None:
    """Apply ``DSPARK_CPU_LINEAR_MAX_FACE`` (read when the extension loads); an unknown name raises, naming
    the variable and the names it takes."""
    name = os.environ.get(MAX_FACE_ENV, "").strip()
    if not name or _C is None:
        return
    try:
        _C.set_packed_linear_max_face(name)
    except RuntimeError as exc:
        raise RuntimeError(f"{MAX_FACE_ENV}={name!r}: {str(exc).splitlines()[0]}") from None


apply_max_face_env()

OP_NAMES = ("verify_greedy", "verify_sampled", "confidence_survival", "schedule_prefix", "schedule_topk",
            "pack_linear_weight", "packed_linear", "sample_categorical")


def has_op(name: str) -> bool:
    """True when `torch.ops.dspark.<name>` exists (the extension loaded and registered it)."""
    return _C is not None and hasattr(torch.ops.dspark, name)


def with_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.with_cuda)


def has_kernel(name: str, device_type: str) -> bool:
    """True when op `name` has a kernel for `device_type` ("cpu" or "cuda")."""
    if not has_op(name):
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"dspark::{name}", key)


def packed_linear_backend(dtype: torch.dtype) -> str:
    """Which CPU face `packed_linear` runs for `dtype` here: "amx_bf16", "avx512_bf16", "avx512", "avx2", "generic" (a
    plain loop: correct, not fast), or "missing" when the extension did not load."""
    if _C is None:
        return "missing"
    names = {torch.bfloat16: "bfloat16", torch.float32: "float32"}
    return _C.packed_linear_backend(names[dtype]) if dtype in names else "generic"


def packed_linear_is_fast(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether packed_linear beats F.linear for `dtype` on `device` at verify-window row counts: a CPU with one
    of its vector faces (`benchmark/kernels/bench_packed_linear.py` measures both)."""
    return device.type == "cpu" and packed_linear_backend(dtype) not in ("generic", "missing")
