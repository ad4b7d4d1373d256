"""Loads the native extension `dspark_sglang._C` and reports which ops it registered."""
from __future__ import annotations

import torch

try:
    from dspark_sglang import _C  # noqa: F401  (registers torch.ops.dspark.*)
    LOAD_ERROR: Exception | None = None
except ImportError as exc:  # a source checkout that was never built
    _C = None
    LOAD_ERROR = exc

OP_NAMES = ("verify_greedy", "verify_sampled", "confidence_survival", "schedule_prefix", "schedule_topk")


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
