"""save_drafter / load_drafter: DeepSpec files, identical proposals after a round trip, target weights."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .checkpoint_factory import build_checkpoint, make_target_modules, state_tensors, target_hidden
from dspark_sglang.drafter import load_drafter, save_drafter
from dspark_sglang.sampling import SamplingBatch


def _proposals(drafter):
    cache = drafter.new_cache(2)
    drafter.append_context(cache, 0, target_hidden(5, drafter.config), torch.arange(5))
    drafter.append_context(cache, 1, target_hidden(2, drafter.config, seed=9), torch.arange(2))
    args = (cache, torch.tensor([4, 6]), torch.tensor([5, 2]))
    greedy = drafter.propose(*args, SamplingBatch.greedy(2))
    sampled = drafter.propose(*args, SamplingBatch.from_lists([1.0, 0.8], top_k=[0, 16]),
                              generator=torch.Generator().manual_seed(5))
    return greedy, sampled


@pytest.mark.parametrize("family, dspark", [
    ("qwen3", {"markov_head_type": "vanilla"}),
    ("llama", {"markov_head_type": "rnn"}),
    ("qwen3", {"markov_head_type": "gated", "confidence_head_with_markov": False}),
    ("qwen3", {"markov_rank": 0, "enable_confidence_head": False}),
])
def test_round_trip_gives_identical_proposals(tmp_path, family, dspark):
    drafter, target = build_checkpoint(str(tmp_path), family, include_target_weights=False, **dspark)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = load_drafter(str(tmp_path), target, drafter.embed_tokens, drafter.lm_head)
    assert loaded.config == drafter.config
    assert loaded.embed_tokens is drafter.embed_tokens and loaded.lm_head is drafter.lm_head
    for a, b in zip(_proposals(drafter), _proposals(loaded)):
        assert torch.equal(a.draft_ids, b.draft_ids)
        torch.testing.assert_close(a.draft_probs, b.draft_probs, rtol=0, atol=0)
        if a.conf_logits is None:
            assert b.conf_logits is None
        else:
            torch.testing.assert_close(a.conf_logits, b.conf_logits, rtol=0, atol=0)


@pytest.mark.parametrize("head_type", ["vanilla", "rnn"])
def test_markov_rows_over_the_draft_vocabulary(tmp_path, head_type):
    """markov_rows="draft_vocab" stores W1 / W2 for the draft vocabulary only; loaded back, the drafter
    proposes exactly what the full one does (anchors and drafts are draft-vocabulary ids here)."""
    drafter, target = build_checkpoint(str(tmp_path / "full"), include_target_weights=False, markov_head_type=head_type)
    vocab = torch.arange(0, 64, 2)                                                      # [32], anchors 4 and 6 in it
    drafter.set_draft_vocab(vocab)
    save_drafter(drafter, str(tmp_path / "rows"), markov_rows="draft_vocab")
    cfg = json.loads((tmp_path / "rows" / "config.json").read_text())
    assert cfg["markov_rows"] == "draft_vocab"
    assert "markov_rows" not in json.loads((tmp_path / "full" / "config.json").read_text())   # DeepSpec keys only
    assert json.loads((tmp_path / "rows" / "draft_vocab.json").read_text()) == vocab.tolist()
    with safe_open(str(tmp_path / "rows" / "model.safetensors"), "pt") as f:
        assert f.get_slice("markov_head.markov_w1.weight").get_shape() == [32, 8]
        assert f.get_slice("markov_head.markov_w2.weight").get_shape() == [32, 8]
    loaded = load_drafter(str(tmp_path / "rows"), target, drafter.embed_tokens, drafter.lm_head)
    assert loaded.config == drafter.config and loaded.config.markov_rows == "full"
    w1 = loaded.markov_head.markov_w1.weight                                            # [64, 8]
    torch.testing.assert_close(w1[vocab], drafter.markov_head.markov_w1.weight[vocab], rtol=0, atol=0)
    assert not w1[1::2].any()                                                           # rows outside: zero
    for a, b in zip(_proposals(drafter), _proposals(loaded)):
        assert torch.equal(a.draft_ids, b.draft_ids)
        torch.testing.assert_close(a.draft_probs, b.draft_probs, rtol=0, atol=0)
        torch.testing.assert_close(a.conf_logits, b.conf_logits, rtol=0, atol=0)


def test_full_rows_keep_the_draft_vocabulary(tmp_path):
    """markov_rows="full" (DeepSpec's layout) still writes the drafter's draft_vocab.json: loaded back, it drafts
    from the same ids and proposes exactly what the saved drafter does."""
    drafter, target = build_checkpoint(str(tmp_path / "plain"), include_target_weights=False)
    vocab = torch.arange(0, 64, 2)
    drafter.set_draft_vocab(vocab)
    save_drafter(drafter, str(tmp_path / "full"))
    assert sorted(os.listdir(tmp_path / "full")) == ["config.json", "draft_vocab.json", "model.safetensors"]
    loaded = load_drafter(str(tmp_path / "full"), target, drafter.embed_tokens, drafter.lm_head)
    assert loaded.draft_vocab_ids.tolist() == vocab.tolist()
    for a, b in zip(_proposals(drafter), _proposals(loaded)):
        assert torch.equal(a.draft_ids, b.draft_ids)
        torch.testing.assert_close(a.draft_probs, b.draft_probs, rtol=0, atol=0)


def test_markov_rows_need_a_draft_vocabulary(tmp_path):
    drafter, _ = build_checkpoint(str(tmp_path / "full"), include_target_weights=False)
    with pytest.raises(ValueError, match="needs a drafter with a draft vocabulary"):
        save_drafter(drafter, str(tmp_path / "rows"), markov_rows="draft_vocab")
    with pytest.raises(ValueError, match="markov_rows must be 'full' or 'draft_vocab'"):
        save_drafter(drafter, str(tmp_path / "rows"), markov_rows="half")


def test_config_json_is_deepspec(tmp_path):
    drafter, target = build_checkpoint(str(tmp_path), "qwen3")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3DSparkModel"] and cfg["model_type"] == "qwen3"
    for key in ("block_size", "num_hidden_layers", "num_target_layers", "target_layer_ids", "mask_token_id",
                "markov_rank", "markov_head_type", "enable_confidence_head", "confidence_head_with_markov"):
        assert key in cfg, key
    assert cfg["tie_word_embeddings"] is False and cfg["num_anchors"] == 512


def test_target_weights_saved_only_when_asked(tmp_path):
    drafter, _ = build_checkpoint(str(tmp_path / "plain"), include_target_weights=False)
    save_drafter(drafter, str(tmp_path / "with"), include_target_weights=True)
    with safe_open(str(tmp_path / "plain" / "model.safetensors"), "pt") as f:
        plain = set(f.keys())
    with safe_open(str(tmp_path / "with" / "model.safetensors"), "pt") as f:
        with_target = set(f.keys())
    assert "embed_tokens.weight" not in plain and "lm_head.weight" not in plain
    assert with_target - plain == {"embed_tokens.weight", "lm_head.weight"}


def test_load_uses_the_targets_modules_not_the_copies(tmp_path):
    drafter, target = build_checkpoint(str(tmp_path), include_target_weights=True)
    other_embed, other_head = make_target_modules(target, seed=99)
    loaded = load_drafter(str(tmp_path), target, other_embed, other_head, dtype=torch.float64)
    assert loaded.lm_head is other_head and loaded.fc.weight.dtype == torch.float64
    assert not any(n.startswith(("embed_tokens", "lm_head")) for n in loaded.state_dict())
    assert loaded.rotary.inv_freq.device.type == "cpu"
    a, _ = _proposals(drafter)
    b, _ = _proposals(loaded)
    assert not torch.allclose(a.draft_probs, b.draft_probs.float(), atol=1e-3)   # other lm_head in use


def test_sharded_checkpoint(tmp_path):
    drafter, target = build_checkpoint(str(tmp_path / "single"), include_target_weights=False)
    tensors = state_tensors(drafter, with_target=False)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    out = tmp_path / "sharded"
    out.mkdir()
    (out / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(out / shard))
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_drafter(str(out), target, drafter.embed_tokens, drafter.lm_head)
    assert torch.equal(_proposals(loaded)[0].draft_ids, _proposals(drafter)[0].draft_ids)
