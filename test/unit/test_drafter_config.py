"""DrafterConfig: DeepSpec keys, defaults, validation messages, dict round trip (Qwen3 and Llama)."""
from __future__ import annotations

import pytest
from .checkpoint_factory import drafter_config_dict, target_config

from dspark_sglang.drafter.config import DrafterConfig


def test_from_dict_qwen3_keeps_target_keys_and_round_trips():
    d = drafter_config_dict(target_config("qwen3"))
    cfg = DrafterConfig.from_dict(d)
    assert cfg.head_dim == 16 and cfg.num_key_value_heads == 2 and cfg.target_layer_ids == (1, 3)
    assert cfg.num_context_features == 2 * 32 and cfg.confidence_input_size == 32 + 8
    out = cfg.to_dict()
    assert out["architectures"] == ["Qwen3DSparkModel"] and out["model_type"] == "qwen3"
    assert out["num_anchors"] == 512 and out["bos_token_id"] == 1          # unknown keys are kept
    assert out["target_layer_ids"] == [1, 3]
    assert DrafterConfig.from_dict(out) == cfg


def test_from_dict_llama_derives_head_dim_and_reads_rope_scaling():
    cfg = DrafterConfig.from_dict(drafter_config_dict(target_config("llama")))
    assert cfg.head_dim == 32 // 4 and cfg.rope_type == "llama3" and cfg.rope_theta == 500000.0
    assert cfg.model_type == "llama"


def test_transformers5_rope_parameters():
    t = target_config("qwen3")
    del t["rope_theta"]
    t["rope_parameters"] = {"rope_type": "linear", "rope_theta": 1234.0, "factor": 2.0}
    cfg = DrafterConfig.from_dict(drafter_config_dict(t))
    assert cfg.rope_theta == 1234.0 and cfg.rope_type == "linear"


def test_defaults_are_deepspec():
    d = drafter_config_dict()
    for key in ("block_size", "num_hidden_layers", "markov_rank", "markov_head_type"):
        del d[key]
    cfg = DrafterConfig.from_dict(d)
    assert (cfg.block_size, cfg.num_hidden_layers, cfg.markov_rank, cfg.markov_head_type) == (7, 5, 256, "vanilla")


@pytest.mark.parametrize("override, message", [
    ({"block_size": 0}, "block_size must be in [1, 256]; got 0"),
    ({"markov_head_type": "lstm"}, "markov_head_type must be one of"),
    ({"markov_rank": -1}, "markov_rank must be an int >= 0"),
    ({"mask_token_id": 64}, "mask_token_id must be in [0, 63]; got 64"),
    ({"target_layer_ids": [1, 5]}, "target_layer_ids must be in [0, 4]"),
    ({"target_layer_ids": []}, "target_layer_ids must be a non-empty list"),
    ({"num_key_value_heads": 3}, "num_key_value_heads must be a divisor of num_attention_heads=4"),
    ({"head_dim": 7}, "head_dim must be even"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling must be None or a dict"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings must be false"),
])
def test_validation_names_field_value_and_range(override, message):
    with pytest.raises(ValueError) as info:
        DrafterConfig.from_dict(drafter_config_dict(**override))
    assert message in str(info.value)


def test_missing_required_key():
    d = drafter_config_dict()
    del d["mask_token_id"]
    with pytest.raises(ValueError, match="mask_token_id"):
        DrafterConfig.from_dict(d)
