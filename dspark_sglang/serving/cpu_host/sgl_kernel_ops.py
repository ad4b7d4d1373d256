"""The `torch.ops.sgl_kernel.*_cpu` ops this package provides (C++ in csrc/cpu/sgl_kernel/).

`load()` imports `dspark_sglang._C`, whose static registrations define the ops in the `sgl_kernel`
namespace, and checks that every op SGLang's CPU engine calls now has a CPU kernel.
"""
from __future__ import annotations

import re

import torch

# Ops the CPU engine calls: no-speculation serving, NGRAM, EAGLE/STANDALONE trees and chain verify.
CPU_OPS = (
    "copy_all_layer_kv_cache_cpu",
    "assign_req_to_token_pool_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "build_draft_decode_metadata_cpu",
    "fill_bonus_tokens_cpu",
    "fill_accept_out_cache_loc_cpu",
    "verify_tree_greedy_cpu",
    "build_tree_kernel_efficient_cpu",
    "reconstruct_indices_from_tree_mask_cpu",
    "rotate_input_ids_cpu",
    "decode_attention_cpu",
    "extend_attention_cpu",
    "rmsnorm_cpu",
    "fused_add_rmsnorm_cpu",
    "silu_and_mul_cpu",
    "rotary_embedding_cpu",
)

SOURCE_DIR = "csrc/cpu/sgl_kernel/"  # where our registrations live (shows in the dispatcher dump)
BUILD_HINT = "DSPARK_BUILD_CUDA=0 python setup.py build_ext --inplace (or pip install --no-build-isolation -e .)"


def has_cpu_kernel(op: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sgl_kernel::{op}", "CPU")


def registration_site(op: str) -> str | None:
    """The 'file:line' that registered the CPU kernel of sgl_kernel::<op>, or None."""
    if not has_cpu_kernel(op):
        return None
    dump = torch._C._dispatch_dump(f"sgl_kernel::{op}")
    match = re.search(r"^CPU: .*?registered at (\S+)", dump, re.MULTILINE)
    return match.group(1) if match else None


def is_ours(op: str) -> bool:
    site = registration_site(op)
    return site is not None and SOURCE_DIR in site


def missing_ops() -> list[str]:
    return [op for op in CPU_OPS if not has_cpu_kernel(op)]


def load() -> None:
    """Registers the ops (imports dspark_sglang._C); raises RuntimeError naming any op still missing."""
    try:
        import dspark_sglang._C  # noqa: F401  (static TORCH_LIBRARY_FRAGMENT(sgl_kernel) registrations)
    except ImportError as exc:
        raise RuntimeError(
            f"dspark_sglang CPU host: the native extension dspark_sglang._C is not built ({exc}); "
            f"build it with {BUILD_HINT}") from exc
    missing = missing_ops()
    if missing:
        raise RuntimeError(
            f"dspark_sglang CPU host: dspark_sglang._C lacks sgl_kernel ops {', '.join(missing)}; "
            f"rebuild it with {BUILD_HINT}")
