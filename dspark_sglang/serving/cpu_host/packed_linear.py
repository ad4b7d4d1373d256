"""The CPU engine's linear layers and lm_head through `dspark.packed_linear` (CPU hosts with AVX2 or AVX-512).

Without AMX, SGLang's CPU engine runs every unquantized linear layer as `F.linear`, whose bf16 path streams
the weights at a third of this host's memory bandwidth at decode row counts (1–64 rows):
`benchmark/kernels/bench_packed_linear.py`. On a CPU host where `packed_linear` has a vector face for the
model's dtype, the bootstrap (`bootstrap.py`, ``DSPARK_CPU_HOST_PACKED_LINEAR``, default on) patches:

* `UnquantizedLinearMethod.process_weights_after_loading`: after SGLang's own step, the weight of every
  CPU linear layer is rewritten in place into the packed layout (`ops.pack_linear_weight`). Only layers
  whose out_features is a multiple of 16 (and in_features even for bf16) are packed, so the parameter
  keeps its shape, dtype and attributes; the layer is marked with `PACKED_ATTR` = out_features.
* `UnquantizedLinearMethod.apply`: marked layers run `ops.packed_linear`; others run SGLang's code.
* `LogitsProcessor._compute_lm_head`: the plain (tied or untied) lm_head matmul runs `packed_linear` over
  a packed copy of the lm_head weight made at its first call (the embedding keeps the original;
  vocab × hidden extra bytes, 57 MB for SmolLM2-135M in bf16). LoRA, quantized, fp32-lm-head and
  `out=` paths keep SGLang's code.

A packed weight is no longer a row-major [N, K] matrix: reloading weights in place
(`update_weights_from_disk`) needs ``DSPARK_CPU_HOST_PACKED_LINEAR=0``.
"""
from __future__ import annotations

import logging
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

PACKED_ATTR = "dspark_packed_out_features"
"""Set on a linear layer whose weight holds the packed layout: its out_features."""
PACKED_LM_HEAD_ATTR = "dspark_packed_lm_head"
"""Set on an lm_head module: the packed copy of its weight."""

_stats = {"packed_layers": 0, "skipped_layers": 0}


def packable(weight: torch.Tensor) -> bool:
    """A CPU [N, K] weight this host packs fast and without changing its shape."""
    if weight.device.type != "cpu" or weight.dim() != 2 or weight.dtype not in (torch.bfloat16, torch.float32):
        return False
    from dspark_sglang.ops import native

    pair = 2 if weight.dtype == torch.bfloat16 else 1
    return (weight.shape[0] % 16 == 0 and weight.shape[1] % pair == 0
            and native.packed_linear_is_fast(weight.dtype, weight.device))


def pack_layer(layer: torch.nn.Module) -> bool:
    """Rewrite `layer.weight` in place into the packed layout; False (untouched) when not packable."""
    from dspark_sglang import ops

    if getattr(layer, PACKED_ATTR, None) is not None:
        return True                                   # already packed (a second post-load call)
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or getattr(layer, "use_intel_amx_backend", False) or not packable(weight):
        _stats["skipped_layers"] += 1
        return False
    with torch.no_grad():
        weight.data.copy_(ops.pack_linear_weight(weight.data))
    setattr(layer, PACKED_ATTR, int(weight.shape[0]))
    _stats["packed_layers"] += 1
    return True


def packed_apply(layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y = x · Wᵀ + bias for a packed layer; x [..., K] of any float dtype (cast to the weight's)."""
    from dspark_sglang import ops

    weight = layer.weight
    return ops.packed_linear(x.to(weight.dtype), weight, bias, getattr(layer, PACKED_ATTR)).to(x.dtype)


def patch_unquant(module: ModuleType) -> None:
    """Route `UnquantizedLinearMethod` through packed weights (see the module docstring)."""
    from dspark_sglang.serving import compat

    compat.require_attrs(module, ("UnquantizedLinearMethod",))
    cls = module.UnquantizedLinearMethod
    compat.require_attrs(cls, ("process_weights_after_loading", "apply"))
    original_process, original_apply = cls.process_weights_after_loading, cls.apply

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        original_process(self, layer)
        pack_layer(layer)

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if getattr(layer, PACKED_ATTR, None) is not None:
            return packed_apply(layer, x, bias)
        return original_apply(self, layer, x, bias)

    cls.process_weights_after_loading = process_weights_after_loading
    cls.apply = apply


def packed_lm_head(lm_head: torch.nn.Module) -> torch.Tensor | None:
    """The packed copy of `lm_head.weight` (made at the first call), or None when it cannot be packed."""
    packed = getattr(lm_head, PACKED_LM_HEAD_ATTR, None)
    if packed is None:
        weight = getattr(lm_head, "weight", None)
        if not isinstance(weight, torch.Tensor) or not packable(weight):
            packed = False
        else:
            from dspark_sglang import ops
            from dspark_sglang.ops import native

            with torch.no_grad():
                packed = ops.pack_linear_weight(weight.detach())
            logger.info("dspark CPU host: lm_head %s packed for packed_linear (%.0f MB copy; face %s, calls split "
                        "over threads from %.3g multiply-adds)", tuple(weight.shape),
                        packed.numel() * packed.element_size() / 1e6, native.packed_linear_backend(weight.dtype),
                        native._C.packed_linear_parallel_macs())
        setattr(lm_head, PACKED_LM_HEAD_ATTR, packed)
    return packed if isinstance(packed, torch.Tensor) else None


def patch_logits_processor(module: ModuleType) -> None:
    """Route the plain lm_head matmul of `LogitsProcessor._compute_lm_head` through `packed_linear`."""
    from dspark_sglang.serving import compat

    compat.require_attrs(module, ("LogitsProcessor", "should_apply_lm_head_quant_method"))
    cls = module.LogitsProcessor
    compat.require_attrs(cls, ("_compute_lm_head",))
    original = cls._compute_lm_head
    quantized = module.should_apply_lm_head_quant_method

    def _compute_lm_head(self, hidden_states, lm_head, embedding_bias=None, *, out=None):
        plain = (out is None and embedding_bias is None and not getattr(self, "use_fp32_lm_head", False)
                 and getattr(self, "rl_on_policy_target", None) is None and hidden_states.device.type == "cpu"
                 and not hasattr(lm_head, "set_lora") and not getattr(lm_head, "use_intel_amx_backend", False)
                 and not quantized(lm_head, getattr(lm_head, "quant_method", None)))
        packed = packed_lm_head(lm_head) if plain else None
        if packed is None:
            return original(self, hidden_states, lm_head, embedding_bias, out=out)
        weight = lm_head.weight
        from dspark_sglang import ops

        return ops.packed_linear(hidden_states.to(weight.dtype), packed, None, int(weight.shape[0]))

    cls._compute_lm_head = _compute_lm_head


def stats() -> dict[str, int]:
    """Layers packed, and post-load calls that left a layer to SGLang's code, in this process."""
    return dict(_stats)
