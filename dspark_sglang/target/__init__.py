"""Verification targets: HF causal LMs with a KV cache that return logits and drafter features."""
from dspark_sglang.target.batch import TargetBatch
from dspark_sglang.target.hf_target import HFTarget, TargetOutput, TargetSequence

__all__ = ["HFTarget", "TargetOutput", "TargetSequence", "TargetBatch"]
