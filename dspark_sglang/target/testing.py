"""Tiny random-weight HF targets built from a config alone (no files): for tests and examples."""
from __future__ import annotations

from typing import Sequence

import torch

from dspark_sglang.target.hf_target import HFTarget


def tiny_llama(vocab_size: int = 40, hidden_size: int = 32, num_layers: int = 4, seed: int = 0,
               weight_scale: float = 4.0, eos_token_id: int | None = None,
               target_layer_ids: Sequence[int] = (0, 2)) -> HFTarget:
    """A random `LlamaForCausalLM` (4 heads, 2 KV heads, fp32, SDPA attention) wrapped as an HFTarget.

    `weight_scale` multiplies the matrices of the default init so that the next-token distributions are
    far from uniform (small ties-free gaps make greedy comparisons meaningful).
    `eos_token_id` None uses vocab_size - 1.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = vocab_size - 1 if eos_token_id is None else eos_token_id
    cfg = LlamaConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                      max_position_embeddings=1024, rope_theta=10000.0, bos_token_id=0, eos_token_id=eos,
                      pad_token_id=0, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(weight_scale)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = 0
    return HFTarget(model.eval(), target_layer_ids)
