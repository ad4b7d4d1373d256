"""Test drafters for SmolLM2-135M (random DeepSpec checkpoints with a planted bigram table).

A random drafter gives τ≈1, so it never exercises multi-token commits. `build_bigram_drafter`
plants a table of (previous token -> next token) pairs in the vanilla Markov head,
B(v) = W2 W1[x_{k-1}] = BIG·[v == next(x_{k-1})], and makes the confidence head confident exactly
on those pairs (logit = +3 on a planted previous token, −3 elsewhere). On repetitive text such as
"1, 1, 1," the drafter then proposes the right continuation and Algorithm 1 verifies long
blocks, elsewhere it proposes noise with low confidence: mixed, ragged verify lengths.
"""
from __future__ import annotations

import json
import os

import torch

from dspark_sglang.drafter import DrafterConfig, DSparkDrafter, save_drafter
from test.unit.checkpoint_factory import drafter_config_dict, make_target_modules, randomize_

SMOLLM2_LAYER_IDS = [1, 10, 19, 27]
# SmolLM2 tokens: "1"=33, ","=28, " "=216 ("1, 1, 1," cycles 33 28 216), " ha"=421.
DEFAULT_BIGRAMS = {33: 28, 28: 216, 216: 33, 421: 421, 3250: 421}
BIG = 200.0


def build_bigram_drafter(path: str, target_dir: str, bigrams: dict[int, int] | None = None, block_size: int = 4,
                         num_layers: int = 1, rank: int = 16, seed: int = 0) -> str:
    """Write a DeepSpec checkpoint for the SmolLM2 target at `target_dir` into `path`; returns path."""
    bigrams = DEFAULT_BIGRAMS if bigrams is None else bigrams
    if len(bigrams) > rank:
        raise ValueError(f"rank {rank} cannot hold {len(bigrams)} bigrams")
    with open(os.path.join(target_dir, "config.json")) as f:
        target = json.load(f)
    cfg = drafter_config_dict(target, block_size=block_size, num_hidden_layers=num_layers,
                              target_layer_ids=SMOLLM2_LAYER_IDS, num_target_layers=target["num_hidden_layers"],
                              mask_token_id=0, markov_rank=rank, tie_word_embeddings=False)
    config = DrafterConfig.from_dict(cfg)
    embed, head = make_target_modules(cfg)
    drafter = randomize_(DSparkDrafter(config, embed, head), seed, scale=0.02).eval()
    hidden = config.hidden_size
    with torch.no_grad():
        w1 = drafter.markov_head.markov_w1.weight
        w2 = drafter.markov_head.markov_w2.weight
        w1.zero_()
        w2.zero_()
        for i, (prev, nxt) in enumerate(bigrams.items()):
            w1[prev, i] = 1.0
            w2[nxt, i] += BIG
        proj = drafter.confidence_head.proj
        proj.weight.zero_()
        proj.weight[0, hidden:] = 6.0
        proj.bias.fill_(-3.0)
    save_drafter(drafter, path, include_target_weights=False)
    return path


def build_dflash_drafter(path: str, target_dir: str, block_size: int = 4, seed: int = 0) -> str:
    """A random markov_rank-0 drafter without a confidence head (the DFlash ablation's format); returns path."""
    with open(os.path.join(target_dir, "config.json")) as f:
        target = json.load(f)
    cfg = drafter_config_dict(target, block_size=block_size, num_hidden_layers=1,
                              target_layer_ids=SMOLLM2_LAYER_IDS, num_target_layers=target["num_hidden_layers"],
                              mask_token_id=0, markov_rank=0, enable_confidence_head=False,
                              confidence_head_with_markov=False, tie_word_embeddings=False)
    config = DrafterConfig.from_dict(cfg)
    embed, head = make_target_modules(cfg)
    drafter = randomize_(DSparkDrafter(config, embed, head), seed, scale=0.02).eval()
    save_drafter(drafter, path, include_target_weights=False)
    return path


def test_bigram_drafter_proposes_planted_continuation(tmp_path):
    """Anchor "1" (33) -> drafts ", 1, " = [28, 216, 33, 28] with high confidence; anchor 5 -> low confidence."""
    from dspark_sglang.drafter import load_drafter
    from dspark_sglang.sampling import SamplingBatch
    from torch import nn

    target = {"vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "head_dim": 64, "intermediate_size": 1536, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 8192, "model_type": "llama", "architectures": ["LlamaForCausalLM"],
              "rope_theta": 100000.0, "tie_word_embeddings": True}
    target_dir = tmp_path / "target"
    target_dir.mkdir()
    (target_dir / "config.json").write_text(json.dumps(target))
    path = build_bigram_drafter(str(tmp_path / "drafter"), str(target_dir))
    embed, head = nn.Embedding(49152, 576), nn.Linear(576, 49152, bias=False)
    drafter = load_drafter(path, target, embed, head, dtype=torch.float32, device="cpu")
    cache = drafter.new_cache(2)
    for r in range(2):
        drafter.append_context(cache, r, torch.randn(3, 4 * 576), torch.arange(3))
    block = drafter.propose(cache, torch.tensor([33, 5]), torch.tensor([3, 3]), SamplingBatch.greedy(2))
    assert block.draft_ids[0].tolist() == [28, 216, 33, 28]
    conf = torch.sigmoid(block.conf_logits)
    assert conf[0].min() > 0.9 and conf[1, 0] < 0.1
