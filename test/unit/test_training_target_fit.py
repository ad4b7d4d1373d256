"""Fitting a preset's drafter to another target: layer ids, mask token, and the trainer's mask check."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from dspark_sglang.training.target_fit import (auto_mask_token_id, auto_target_layer_ids, check_mask_token_unused,
                                               fit_drafter_to_target, parse_target_layer_ids)


def test_auto_target_layer_ids_spread_and_never_the_final_layer():
    assert auto_target_layer_ids(30, 4) == [1, 10, 18, 27]
    assert auto_target_layer_ids(36, 4) == [1, 12, 22, 33]
    assert auto_target_layer_ids(6, 4) == [1, 2, 3]                 # shallow: fewer ids, none repeated
    assert auto_target_layer_ids(4, 4) == [1]
    for n in range(4, 80):
        ids = auto_target_layer_ids(n, 5)
        assert ids == sorted(set(ids)) and max(ids) <= n - 3 and min(ids) >= 1
    with pytest.raises(ValueError, match="needs >= 4"):
        auto_target_layer_ids(3, 4)


def test_parse_target_layer_ids():
    assert parse_target_layer_ids("2, 5,9", 12, 4) == [2, 5, 9]
    assert parse_target_layer_ids("auto", 30, 4) == [1, 10, 18, 27]
    with pytest.raises(ValueError, match=r"in \[0, 10\] .* 12 layers"):
        parse_target_layer_ids("1,11", 12, 4)                    # 11 is the final layer
    with pytest.raises(ValueError, match="'auto' or comma-separated ints"):
        parse_target_layer_ids("1;2", 12, 4)
    with pytest.raises(ValueError, match="increasing without repeats"):
        parse_target_layer_ids("5,5,2", 12, 4)


class _Added:
    def __init__(self, special):
        self.special = special


class _ChatTok:
    """Stub tokenizer: ids 0-5 special, 6 added but not special; the chat template emits 0, 1 and 4."""
    bos_token_id, eos_token_id, pad_token_id, unk_token_id = 0, 1, 1, None
    chat_template = "stub"
    added_tokens_decoder = {i: _Added(True) for i in range(6)} | {6: _Added(False)}

    def apply_chat_template(self, messages, tokenize=True):
        return {"input_ids": [0, 4, 30, 1, 4, 31, 1]}


def test_auto_mask_token_is_the_last_special_token_the_template_leaves_unused():
    assert auto_mask_token_id(_ChatTok()) == 5
    tok = _ChatTok()
    tok.apply_chat_template = lambda messages, tokenize=True: [0, 4, 5, 1]      # a plain list works too
    assert auto_mask_token_id(tok) == 3
    tok.added_tokens_decoder = {0: _Added(True), 1: _Added(True), 6: _Added(False)}
    with pytest.raises(ValueError, match="--mask-token-id N"):
        auto_mask_token_id(tok)


def test_auto_mask_token_with_a_template_that_refuses_system_turns():
    """Gemma's / Mistral's templates raise on a system message: the conversation is rendered without one."""
    def no_system(messages, tokenize=True):
        if messages[0]["role"] == "system":
            raise RuntimeError("System role not supported")
        return [0, 2, 30, 1]
    tok = _ChatTok()
    tok.apply_chat_template = no_system
    assert auto_mask_token_id(tok) == 5                                   # 2 is emitted, 3 and 5 are free
    tok.apply_chat_template = lambda messages, tokenize=True: (_ for _ in ()).throw(RuntimeError("broken"))
    with pytest.raises(ValueError, match="renders no user / assistant conversation, .* --mask-token-id N"):
        auto_mask_token_id(tok)


def test_auto_mask_token_of_smollm2_is_the_presets():
    from transformers import AutoTokenizer

    from dspark_sglang.models import smollm2_path
    from dspark_sglang.training.presets import PRESETS
    tok = AutoTokenizer.from_pretrained(str(smollm2_path()))
    assert auto_mask_token_id(tok) == PRESETS["smollm2-v2"].drafter["mask_token_id"] == 16


def test_fit_drafter_to_target():
    preset = dict(markov_rank=32, target_layer_ids=[1, 10, 19, 27], mask_token_id=16)
    smollm2 = dict(num_hidden_layers=30, vocab_size=49152)
    assert fit_drafter_to_target(preset, smollm2, _ChatTok(), None, None) == preset          # the preset's own
    small = dict(num_hidden_layers=24, vocab_size=1000)
    with pytest.raises(ValueError, match=r"target_layer_ids \[1, 10, 19, 27\] do not fit .* --target-layer-ids auto"):
        fit_drafter_to_target(preset, small, _ChatTok(), None, None)
    fitted = fit_drafter_to_target(preset, small, _ChatTok(), "auto", "auto")
    assert fitted == dict(markov_rank=32, target_layer_ids=[1, 8, 14, 21], mask_token_id=5)
    assert preset["target_layer_ids"] == [1, 10, 19, 27]                                     # not mutated
    assert fit_drafter_to_target(preset, small, _ChatTok(), "2,3", "7")["mask_token_id"] == 7
    with pytest.raises(ValueError, match="not a token id of this target .vocab 1000"):
        fit_drafter_to_target(preset, small, _ChatTok(), "auto", "1000")
    with pytest.raises(ValueError, match="'auto' or an int"):
        fit_drafter_to_target(preset, small, _ChatTok(), "auto", "mask")


def test_check_mask_token_unused():
    tokens = np.array([3, 4, 4, 9], dtype=np.int32)
    check_mask_token_unused(tokens, 5)
    check_mask_token_unused(tokens, 63)
    with pytest.raises(ValueError, match="mask_token_id 4 occurs 2 times .* --mask-token-id auto"):
        check_mask_token_unused(tokens, 4)


def test_trainer_refuses_a_mask_token_that_occurs_in_the_data(tmp_path):
    from dspark_sglang.training.data import GenerationConfig, generate_answers
    from dspark_sglang.training.features import FeatureCache, build_feature_cache
    from dspark_sglang.training.trainer import train
    from test.unit.test_training_pipeline import PROMPTS, _Tok, _train_cfg, make_tiny_target
    target = make_tiny_target()
    recs = generate_answers(target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=6),
                            progress=False)
    build_feature_cache(target, recs, tmp_path / "f", [0, 2], progress=False)
    used = int(FeatureCache(tmp_path / "f").tokens[0])                                      # a prompt token
    cfg = _train_cfg(drafter=dict(_train_cfg().drafter, mask_token_id=used))
    with pytest.raises(ValueError, match=f"mask_token_id {used} occurs"):
        train(target, tmp_path / "f", tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run" / "loss_log.jsonl").exists()


def test_features_and_train_refuse_a_cache_of_other_layers(tmp_path):
    """A cache built from layers [0, 2] is neither extended with [1, 2] nor trained on by a drafter reading [1, 2]
    (same width: nothing else would notice)."""
    from dspark_sglang.training.data import GenerationConfig, generate_answers
    from dspark_sglang.training.features import build_feature_cache
    from dspark_sglang.training.trainer import train
    from test.unit.test_training_pipeline import PROMPTS, _Tok, _train_cfg, make_tiny_target
    target = make_tiny_target()
    recs = generate_answers(target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=6),
                            progress=False)
    build_feature_cache(target, recs[:4], tmp_path / "f", [0, 2], progress=False)
    size = (tmp_path / "f" / "features.bin").stat().st_size
    with pytest.raises(ValueError, match=r"holds target layers \[0, 2\] .*not \[1, 2\] .* --target-layer-ids"):
        build_feature_cache(target, recs, tmp_path / "f", [1, 2], progress=False)
    assert (tmp_path / "f" / "features.bin").stat().st_size == size                     # untouched
    cfg = _train_cfg(drafter=dict(_train_cfg().drafter, target_layer_ids=[1, 2]))
    with pytest.raises(ValueError, match=r"holds target layers \[0, 2\] but the drafter reads \[1, 2\]"):
        train(target, tmp_path / "f", tmp_path / "run", cfg, progress=False)


def test_cli_flags_reach_the_drafter(monkeypatch):
    """`--target-layer-ids` / `--mask-token-id` are applied by run_stage after the target is loaded."""
    import dspark_sglang.training.pipeline as pipeline
    from test.unit.test_training_server_generation import _train_drafter_cli
    seen = {}
    target = SimpleNamespace(config=SimpleNamespace(to_dict=lambda: dict(num_hidden_layers=24, vocab_size=1000)))
    monkeypatch.setattr(pipeline, "load_target", lambda path, device="cpu": (target, _ChatTok(), "t"))
    monkeypatch.setattr(pipeline, "stage_train", lambda args, preset, model, path: seen.update(drafter=preset.drafter))
    args = _train_drafter_cli().parse_args(["train", "--preset", "smollm2-v2", "--target", "t",
                                            "--target-layer-ids", "auto", "--mask-token-id", "auto"])
    pipeline.run_stage("train", args)
    assert seen["drafter"]["target_layer_ids"] == [1, 8, 14, 21] and seen["drafter"]["mask_token_id"] == 5
    args = _train_drafter_cli().parse_args(["train", "--preset", "smollm2-v2", "--target", "t"])
    with pytest.raises(ValueError, match="--target-layer-ids auto"):
        pipeline.run_stage("train", args)
