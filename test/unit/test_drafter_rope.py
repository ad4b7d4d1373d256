"""RoPE: inverse frequencies (default / linear / llama3) and the rotation agree with transformers."""
from __future__ import annotations

import pytest
import torch

from .checkpoint_factory import drafter_config_dict, target_config
from dspark_sglang.drafter.config import DrafterConfig
from dspark_sglang.drafter.rope import RotaryEmbedding, apply_rope, rope_inv_freq

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402


@pytest.mark.parametrize("scaling", [
    None,
    {"rope_type": "linear", "factor": 4.0},
    # original length 512 with head_dim 64: wavelengths fall in all three llama3 bands
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 512},
])
def test_inv_freq_matches_transformers(scaling):
    t = target_config("llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                      rope_scaling=scaling, rope_theta=10000.0)
    ours = rope_inv_freq(DrafterConfig.from_dict(drafter_config_dict(t)))
    params = dict(scaling or {"rope_type": "default"}, rope_theta=10000.0)
    hf = transformers.LlamaConfig(hidden_size=256, num_attention_heads=4, intermediate_size=64, vocab_size=64,
                                  max_position_embeddings=4096, rope_parameters=params)
    rope_type = params["rope_type"]
    if rope_type == "default":
        theirs = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    else:
        theirs, _ = ROPE_INIT_FUNCTIONS[rope_type](hf, torch.device("cpu"))
    torch.testing.assert_close(ours, theirs.float())
    if rope_type == "llama3":
        plain = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
        ratio = plain / ours
        assert (ratio == 1).any() and (ratio == 8).any() and ((ratio > 1) & (ratio < 8)).any()


def test_apply_rope_matches_transformers_rotation():
    from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

    cfg = DrafterConfig.from_dict(drafter_config_dict(target_config("qwen3")))
    rotary = RotaryEmbedding(cfg)
    pos = torch.tensor([[0, 3, 17, 100]])                                # [1, S]
    cos, sin = rotary(pos)                                               # [1, S, D]
    q = torch.randn(1, 4, 4, cfg.head_dim)                               # [B, heads, S, D]
    k = torch.randn(1, 2, 4, cfg.head_dim)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(apply_rope(q, cos[:, None], sin[:, None]), q_ref)
    torch.testing.assert_close(apply_rope(k, cos[:, None], sin[:, None]), k_ref)
