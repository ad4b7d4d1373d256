"""Tiny DeepSpec-format DSpark checkpoints with random weights, for tests.

`target_config(family)` is a miniature HF config (Qwen3 or Llama family); `drafter_config_dict` adds
the DSpark keys; `make_drafter` builds a randomly initialised drafter plus the target's shared
embed/lm_head; `write_checkpoint` writes arbitrary (possibly malformed) config + tensors.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from dspark_sglang.drafter import DrafterConfig, DSparkDrafter, save_drafter

VOCAB = 64
HIDDEN = 32
NUM_TARGET_LAYERS = 6


def target_config(family: str = "qwen3", **overrides: Any) -> dict[str, Any]:
    """Miniature HF target config. Qwen3 has an explicit head_dim (16 != hidden/heads = 8);
    Llama has none (hidden/heads) and llama3 rope scaling."""
    cfg: dict[str, Any] = {
        "hidden_size": HIDDEN, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": VOCAB, "num_hidden_layers": NUM_TARGET_LAYERS, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }
    if family == "qwen3":
        cfg.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=16, rope_theta=10000.0,
                   rope_scaling=None, tie_word_embeddings=False)
    elif family == "llama":
        cfg.update(model_type="llama", architectures=["LlamaForCausalLM"], rope_theta=500000.0,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    else:
        raise ValueError(family)
    cfg.update(overrides)
    return cfg


def drafter_config_dict(target: dict[str, Any] | None = None, **dspark: Any) -> dict[str, Any]:
    """config.json of a DeepSpec drafter: the target's config + DSpark keys (tiny defaults)."""
    cfg = dict(target if target is not None else target_config())
    cfg.update(architectures=["Qwen3DSparkModel"], block_size=4, num_hidden_layers=2,
               num_target_layers=cfg["num_hidden_layers"], target_layer_ids=[1, 3], mask_token_id=VOCAB - 1,
               markov_rank=8, markov_head_type="vanilla", enable_confidence_head=True,
               confidence_head_with_markov=True, num_anchors=512, tie_word_embeddings=False)
    cfg.update(dspark)
    return cfg


def make_target_modules(config: dict[str, Any], seed: int = 1) -> tuple[nn.Embedding, nn.Linear]:
    """Random target embed_tokens / lm_head, weight [V, H]."""
    gen = torch.Generator().manual_seed(seed)
    embed = nn.Embedding(config["vocab_size"], config["hidden_size"])
    head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
    with torch.no_grad():
        embed.weight.copy_(torch.randn(embed.weight.shape, generator=gen))
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.5)
    return embed.requires_grad_(False), head.requires_grad_(False)


def randomize_(drafter: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """Random weights everywhere (norm weights 1 ± noise) so every parameter influences the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    return drafter


def make_drafter(family: str = "qwen3", seed: int = 0, target: dict[str, Any] | None = None,
                 **dspark: Any) -> tuple[DSparkDrafter, dict[str, Any]]:
    """(random drafter, target config) for a tiny target; `dspark` overrides DSpark keys."""
    target = target if target is not None else target_config(family)
    config = DrafterConfig.from_dict(drafter_config_dict(target, **dspark))
    embed, head = make_target_modules(target)
    drafter = DSparkDrafter(config, embed, head)
    return randomize_(drafter, seed).eval(), target


def build_checkpoint(path: str, family: str = "qwen3", seed: int = 0, include_target_weights: bool = True,
                     **dspark: Any) -> tuple[DSparkDrafter, dict[str, Any]]:
    """Save a random drafter as a DeepSpec checkpoint at `path`; returns (drafter, target config)."""
    drafter, target = make_drafter(family, seed, **dspark)
    save_drafter(drafter, path, include_target_weights=include_target_weights)
    return drafter, target


def write_checkpoint(path: str, config: dict[str, Any] | None, tensors: dict[str, torch.Tensor] | None) -> None:
    """Write config.json and/or model.safetensors verbatim (None skips the file): malformed cases."""
    os.makedirs(path, exist_ok=True)
    if config is not None:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
    if tensors is not None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "model.safetensors"))


def state_tensors(drafter: DSparkDrafter, with_target: bool = True) -> dict[str, torch.Tensor]:
    """The drafter's state dict as CPU tensors (+ target copies, as DeepSpec saves them)."""
    tensors = {k: v.detach().cpu().clone() for k, v in drafter.state_dict().items()}
    if with_target:
        tensors["embed_tokens.weight"] = drafter.embed_tokens.weight.detach().cpu().clone()
        tensors["lm_head.weight"] = drafter.lm_head.weight.detach().cpu().clone()
    return tensors


def target_hidden(num_tokens: int, config: DrafterConfig, seed: int = 2) -> torch.Tensor:
    """Random target features [T, n·H]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, config.num_context_features, generator=gen)
