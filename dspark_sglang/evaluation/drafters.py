"""Getting a DSpark drafter for an `HFTarget`: load a DeepSpec checkpoint, or build a random one.

A random drafter (random weights, the target's embed_tokens / lm_head) accepts little, but it exercises
the whole pipeline, and losslessness must hold for ANY drafter, which makes it the harshest test input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from dspark_sglang.drafter import DrafterConfig, DSparkDrafter, load_drafter
from dspark_sglang.target import HFTarget


def drafter_config_for(target: HFTarget, target_layer_ids: Sequence[int], block_size: int = 7,
                       mask_token_id: int = 0, num_hidden_layers: int = 1, markov_rank: int = 32,
                       **overrides: Any) -> DrafterConfig:
    """A DrafterConfig whose shapes fit `target` (its HF config + the DSpark keys)."""
    cfg = target.config.to_dict()
    cfg.update(architectures=["Qwen3DSparkModel"], block_size=block_size, num_hidden_layers=num_hidden_layers,
               num_target_layers=target.config.num_hidden_layers, target_layer_ids=list(target_layer_ids),
               mask_token_id=mask_token_id, markov_rank=markov_rank, enable_confidence_head=True,
               confidence_head_with_markov=markov_rank > 0, tie_word_embeddings=False)
    cfg.update(overrides)
    return DrafterConfig.from_dict(cfg)


def random_drafter(target: HFTarget, seed: int = 0, scale: float = 0.05, **config_kwargs: Any) -> DSparkDrafter:
    """A drafter with random weights N(0, scale²) (norm weights 1) for `target`, in the target's dtype.

    Args:
        target:        the target (hidden size, vocab, layer count and shared modules come from it).
        seed:          weight seed (the global RNG is left untouched).
        config_kwargs: `drafter_config_for` arguments (block_size, mask_token_id, target_layer_ids, ...);
                       target_layer_ids defaults to the target's.
    """
    config_kwargs.setdefault("target_layer_ids", target.target_layer_ids)
    config = drafter_config_for(target, **config_kwargs)
    drafter = DSparkDrafter(config, target.embed_tokens, target.lm_head)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(1.0 + noise if name.endswith("norm.weight") else noise)
    return drafter.to(device=target.device, dtype=target.dtype).eval()


def load_drafter_for(path: str | Path, target: HFTarget, dtype: torch.dtype | None = None) -> DSparkDrafter:
    """Load a DeepSpec checkpoint for `target` (the contract check names every mismatch)."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"drafter checkpoint folder {path} does not exist")
    return load_drafter(str(path), target.config.to_dict(), target.embed_tokens, target.lm_head,
                        dtype=dtype or target.dtype, device=target.device)
