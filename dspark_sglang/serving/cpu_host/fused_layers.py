"""RMSNorm, SiluAndMul and RotaryEmbedding of SGLang's CPU engine through one op each (CPU hosts: SGLang
has no sgl_kernel CPU build there).

SGLang picks a layer's `forward_cpu` (which calls sgl_kernel's fused CPU ops) only where AMX is present;
elsewhere every decoder layer runs `forward_native`: ≈ 10 eager ATen ops per RMSNorm, ≈ 15 per rotary
embedding, 3 per SiluAndMul, whose dispatch outweighs the arithmetic at decode row counts. On a CPU host
the bootstrap (``DSPARK_CPU_HOST_FUSED_LAYERS``, default on) wraps the three classes' `forward_native` so
that the common case runs this package's `sgl_kernel` CPU ops (csrc/cpu/sgl_kernel/elementwise_ops.cpp):
`fused_add_rmsnorm_cpu` / `rmsnorm_cpu`, `silu_and_mul_cpu`, `rotary_embedding_cpu`. Every other case —
a subclass with its own `forward_native`, torch.compile tracing, RMSNorm options the op does not model
(variance_size_override, fp32 / override residual dtype, cast before the weight, post-residual addition),
mrope positions, a precomputed `sin_cos_cache`, non-CPU or non-float tensors — keeps SGLang's code.

Numerics: the ops compute in fp32 and round once per output, where the native path rounds after every
bf16 op; outputs can differ in the last bf16 bit. Each output row depends on its own input row only,
so a verify row and a decode row of the same token agree.
"""
from __future__ import annotations

from types import ModuleType

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_calls = {"fused": 0, "native": 0}


def _cpu_float(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in FLOAT_DTYPES for t in tensors) and \
        len({t.dtype for t in tensors}) == 1


def _compiling() -> bool:
    return bool(getattr(torch.compiler, "is_compiling", lambda: False)())


def patch_rmsnorm(module: ModuleType) -> None:
    """`RMSNorm.forward_native` -> `rmsnorm_cpu` / in-place `fused_add_rmsnorm_cpu` where they model it."""
    from dspark_sglang.serving import compat

    compat.require_attrs(module, ("RMSNorm",))
    cls = module.RMSNorm
    original = cls.forward_native

    def forward_native(self, x, residual=None, post_residual_addition=None, quant_linear=None):
        fast = (type(self).forward_native is forward_native and not _compiling() and post_residual_addition is None
                and getattr(self, "variance_size_override", None) is None
                and not getattr(self, "cast_x_before_out_mul", False) and not getattr(self, "fp32_residual", False)
                and getattr(self, "override_orig_dtype", None) is None and x.is_contiguous()
                and x.shape[-1] == self.hidden_size and _cpu_float(x, self.weight)
                and (residual is None or (_cpu_float(residual, x) and residual.is_contiguous()
                                          and residual.shape == x.shape)))
        if not fast:
            _calls["native"] += 1
            return original(self, x, residual, post_residual_addition, quant_linear)
        _calls["fused"] += 1
        if residual is None:
            return torch.ops.sgl_kernel.rmsnorm_cpu(x, self.weight.data, self.variance_epsilon)
        torch.ops.sgl_kernel.fused_add_rmsnorm_cpu(x, residual, self.weight.data, self.variance_epsilon)
        return x, residual

    cls.forward_native = forward_native


def patch_silu_and_mul(module: ModuleType) -> None:
    """`SiluAndMul.forward_native` -> `silu_and_mul_cpu`."""
    from dspark_sglang.serving import compat

    compat.require_attrs(module, ("SiluAndMul",))
    cls = module.SiluAndMul
    original = cls.forward_native

    def forward_native(self, x, *args, **kwargs):
        if (type(self).forward_native is not forward_native or args or kwargs or _compiling() or not _cpu_float(x)
                or x.shape[-1] % 2):
            _calls["native"] += 1
            return original(self, x, *args, **kwargs)
        _calls["fused"] += 1
        return torch.ops.sgl_kernel.silu_and_mul_cpu(x)

    cls.forward_native = forward_native


def patch_rotary(module: ModuleType) -> None:
    """`RotaryEmbedding.forward_native` -> `rotary_embedding_cpu` (1-D positions, cache indexed by position)."""
    from dspark_sglang.serving import compat

    compat.require_attrs(module, ("RotaryEmbedding",))
    cls = module.RotaryEmbedding
    original = cls.forward_native

    def forward_native(self, positions, query, key, offsets=None, fused_set_kv_buffer_arg=None):
        cache = getattr(self, "cos_sin_cache", None)
        fast = (type(self).forward_native is forward_native and not _compiling() and fused_set_kv_buffer_arg is None
                and not hasattr(self, "sin_cos_cache") and isinstance(cache, torch.Tensor) and cache.dim() == 2
                and cache.shape[1] == self.rotary_dim and positions.dim() == 1
                and positions.device.type == "cpu" and query.shape[0] == positions.shape[0] == key.shape[0]
                and _cpu_float(query, key) and cache.device.type == "cpu")
        if not fast:
            _calls["native"] += 1
            return original(self, positions, query, key, offsets, fused_set_kv_buffer_arg)
        _calls["fused"] += 1
        if offsets is not None:
            positions = positions + offsets
        return torch.ops.sgl_kernel.rotary_embedding_cpu(positions, query, key, self.head_size, cache,
                                                         self.is_neox_style)

    cls.forward_native = forward_native


def calls() -> dict[str, int]:
    """Layer calls served by the fused ops / left to SGLang's native code, in this process."""
    return dict(_calls)
