"""The checkpoint contract: a corpus of malformed checkpoints, each refused with a specific message
(and its fix), every problem reported at once, clear errors for missing files."""
from __future__ import annotations

import pytest
import torch

from .checkpoint_factory import make_drafter, state_tensors, target_config, write_checkpoint
from dspark_sglang.drafter import CheckpointContractError, check_checkpoint_contract, load_drafter
from dspark_sglang.drafter.checkpoint import read_state_dict_shapes
from dspark_sglang.drafter.draft_vocab import write_draft_vocab


def _valid():
    drafter, target = make_drafter("qwen3")
    return drafter, drafter.config.to_dict(), state_tensors(drafter), target


def _set(**kv):
    def mutate(cfg, tensors, target):
        cfg.update(kv)
    return mutate


def _drop_weight(name):
    def mutate(cfg, tensors, target):
        del tensors[name]
    return mutate


def _speculators_weights(cfg, tensors, target):
    tensors.clear()
    tensors["transformer.layers.0.self_attn.q_proj.weight"] = torch.zeros(64, 32)
    tensors["embed_tokens.weight"] = torch.zeros(64, 32)


def _extra_layer(cfg, tensors, target):
    tensors["layers.2.mlp.up_proj.weight"] = torch.zeros(64, 32)


def _transposed_fc(cfg, tensors, target):
    tensors["fc.weight"] = tensors["fc.weight"].T.contiguous()


def _gate_weights(cfg, tensors, target):
    tensors["markov_head.gate_proj.weight"] = torch.zeros(8, 40)
    tensors["markov_head.gate_proj.bias"] = torch.zeros(8)


def _no_confidence(cfg, tensors, target):
    del tensors["confidence_head.proj.weight"], tensors["confidence_head.proj.bias"]


def _bigger_target(cfg, tensors, target):
    target.update(hidden_size=64, vocab_size=100, num_hidden_layers=8)


def _wrong_embed_copy(cfg, tensors, target):
    tensors["embed_tokens.weight"] = torch.zeros(50, 32)


def _missing_key(cfg, tensors, target):
    del cfg["target_layer_ids"]


SPEC = "predicts the token at anchor+j, whereas DSpark is anchor-first"
CORPUS = {
    "speculators_config": (_set(speculators_config={"proposal_methods": []}, speculators_model_type="eagle3"),
                           [SPEC, "speculators_config"]),
    "eagle_speculator_arch": (_set(architectures=["EagleSpeculator"]), [SPEC, "EagleSpeculator"]),
    "speculators_weights": (_speculators_weights, [SPEC, "transformer.layers.0"]),
    "target_arch": (_set(architectures=["Qwen3ForCausalLM"]),
                    ["architectures is ['Qwen3ForCausalLM'], expected ['Qwen3DSparkModel']"]),
    "other_target": (_bigger_target, ["hidden_size=32 but the target's hidden_size=64",
                                      "vocab_size=64 but the target's vocab_size=100",
                                      "num_target_layers=6 but the target's num_hidden_layers=8",
                                      "embed_tokens.weight has shape [64, 32], the target's is [100, 64]"]),
    "mask_out_of_vocab": (_set(mask_token_id=64), ["mask_token_id=64 is not a token id in [0, vocab_size=64)"]),
    "final_layer": (_set(target_layer_ids=[1, 5]), ["include the target's final layer 5", "[0, 4]"]),
    "layer_out_of_range": (_set(target_layer_ids=[-1, 3, 9]), ["target_layer_ids [-1, 9] are outside [0, 4]"]),
    "layer_ids_not_list": (_set(target_layer_ids=3), ["must be a non-empty list of ints"]),
    "block_size_zero": (_set(block_size=0), ["block_size=0 must be an int >= 1"]),
    "unknown_head": (_set(markov_head_type="lstm"), ["markov_head_type='lstm' is unknown"]),
    "rank_vs_weights": (_set(markov_rank=16), ["markov_rank=16 but markov_head.markov_w1.weight has shape [64, 8]",
                                               "set markov_rank to 8"]),
    "rank_zero_with_weights": (_set(markov_rank=0), ["set markov_rank to 8"]),
    "rank_without_weights": (_drop_weight("markov_head.markov_w1.weight"), ["no markov_head.markov_w1.weight"]),
    "head_type_vs_weights": (_gate_weights, ["set markov_head_type to 'gated'"]),
    "unknown_markov_rows": (_set(markov_rows="half"), ["markov_rows='half' is unknown"]),
    "draft_rows_without_vocab": (_set(markov_rows="draft_vocab"),
                                 ["markov_rows is \"draft_vocab\"", "has no draft_vocab.json"]),
    "missing_weight": (_drop_weight("layers.1.mlp.up_proj.weight"), ["missing weights ['layers.1.mlp.up_proj.weight']"]),
    "unexpected_weight": (_extra_layer, ["unexpected weights ['layers.2.mlp.up_proj.weight']"]),
    "wrong_shape": (_transposed_fc, ["wrong weight shapes [fc.weight: [64, 32] != expected [32, 64]]"]),
    "no_confidence_weights": (_no_confidence, ["set enable_confidence_head to false"]),
    "confidence_width": (_set(confidence_head_with_markov=False),
                         ["confidence_head.proj.weight: [1, 40] != expected [1, 32]"]),
    "missing_key": (_missing_key, ["lacks 'target_layer_ids'"]),
    "bad_heads": (_set(num_key_value_heads=3), ["num_key_value_heads must be a divisor"]),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_checkpoint_is_refused(tmp_path, case):
    mutate, expected = CORPUS[case]
    drafter, cfg, tensors, target = _valid()
    mutate(cfg, tensors, target)
    write_checkpoint(str(tmp_path), cfg, tensors)
    with pytest.raises(CheckpointContractError) as info:
        load_drafter(str(tmp_path), target, drafter.embed_tokens, drafter.lm_head)
    message = str(info.value)
    assert str(tmp_path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert all("→ fix:" in p for p in info.value.problems)
    assert isinstance(info.value, ValueError)


def test_draft_vocabulary_rows_must_match_draft_vocab_json(tmp_path):
    drafter, cfg, tensors, target = _valid()
    cfg["markov_rows"] = "draft_vocab"
    for name in ("markov_head.markov_w1.weight", "markov_head.markov_w2.weight"):
        tensors[name] = tensors[name][:10]                                             # [10, 8]
    write_checkpoint(str(tmp_path), cfg, tensors)
    write_draft_vocab(tmp_path, torch.arange(12))
    with pytest.raises(CheckpointContractError, match=r"markov_head.markov_w1.weight: \[10, 8\] != expected \[12, 8\]"):
        load_drafter(str(tmp_path), target, drafter.embed_tokens, drafter.lm_head)
    write_draft_vocab(tmp_path, torch.arange(10))
    loaded = load_drafter(str(tmp_path), target, drafter.embed_tokens, drafter.lm_head)
    assert loaded.markov_head.markov_w1.weight.shape == (64, 8)


def test_valid_checkpoint_passes(tmp_path):
    drafter, cfg, tensors, target = _valid()
    write_checkpoint(str(tmp_path), cfg, tensors)
    check_checkpoint_contract(cfg, read_state_dict_shapes(str(tmp_path)), target)     # no raise
    check_checkpoint_contract(cfg, read_state_dict_shapes(str(tmp_path)), target_config("qwen3"))


def test_every_problem_is_reported_at_once():
    drafter, cfg, tensors, target = _valid()
    cfg.update(architectures=["Foo"], mask_token_id=999, block_size=0, markov_head_type="lstm")
    target.update(hidden_size=48)
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    with pytest.raises(CheckpointContractError) as info:
        check_checkpoint_contract(cfg, shapes, target)
    # architectures, hidden_size, mask_token_id, block_size, markov_head_type, embed/lm_head copies
    assert len(info.value.problems) == 7
    assert "(7 problems)" in str(info.value)
    for fragment in ("architectures", "hidden_size=32 but", "mask_token_id=999", "block_size=0",
                     "markov_head_type='lstm'", "embed_tokens.weight has shape", "lm_head.weight has shape"):
        assert fragment in str(info.value), fragment


def test_missing_files_name_the_path(tmp_path):
    drafter, cfg, tensors, target = _valid()
    write_checkpoint(str(tmp_path / "no_config"), None, tensors)
    with pytest.raises(FileNotFoundError, match="no_config/config.json does not exist"):
        load_drafter(str(tmp_path / "no_config"), target, drafter.embed_tokens, drafter.lm_head)
    write_checkpoint(str(tmp_path / "no_weights"), cfg, None)
    with pytest.raises(FileNotFoundError, match="no_weights/model.safetensors nor"):
        load_drafter(str(tmp_path / "no_weights"), target, drafter.embed_tokens, drafter.lm_head)
    (tmp_path / "bad_json").mkdir()
    (tmp_path / "bad_json" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad_json/config.json is not valid JSON"):
        load_drafter(str(tmp_path / "bad_json"), target, drafter.embed_tokens, drafter.lm_head)
