"""Inference-only drafter linears over `ops.packed_linear` (CPU hosts with its vector face).

The drafter is small (one layer), but at serving row counts its `F.linear` calls stream their weights at
a third of the memory bandwidth, like the target's (`benchmark/kernels/bench_packed_linear.py`).
`pack_for_inference(drafter)` swaps every `nn.Linear` of the drafter for a `PackedLinear` (no autograd:
serving only; training keeps `nn.Linear`) and makes the draft-vocabulary heads — the lm_head rows and the
Markov head's `markov_w2` rows — packed too. The math is the same linear map; bf16 outputs may differ
from `F.linear` in the last bit (another summation order), and a row's output does not depend on the
other rows in the call.
"""
from __future__ import annotations

import torch
from torch import nn

from dspark_sglang import ops
from dspark_sglang.ops import native


class PackedLinear(nn.Module):
    """y = x · Wᵀ + b over a packed weight (inference only; no gradient reaches W or b).

    Args:
        weight: [N, K] bfloat16 or float32.  bias: [N] or None.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach(), persistent=False)   # the original, for row gathers
        self.register_buffer("packed", ops.pack_linear_weight(weight.detach().contiguous()), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(weight.dtype), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "PackedLinear":
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.packed_linear(x.to(self.packed.dtype), self.packed, self.bias, self.out_features)


def pack_for_inference(drafter: nn.Module) -> int:
    """Replace the drafter's `nn.Linear` modules by `PackedLinear` and pack its draft-vocabulary heads,
    where `native.packed_linear_is_fast` holds for their weights. Returns how many linears were replaced
    (0: untouched)."""
    replaced = 0
    for parent in list(drafter.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and native.packed_linear_is_fast(child.weight.dtype, child.weight.device):
                setattr(parent, name, PackedLinear.from_linear(child))
                replaced += 1
    if hasattr(drafter, "packed_heads"):
        drafter.packed_heads = native.packed_linear_is_fast(drafter.dtype, drafter.device)
    return replaced
