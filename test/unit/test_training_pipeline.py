"""Training pipeline on a tiny random Llama target: resumable answer generation, resumable feature
cache, and a killed-then-resumed training run that continues bit-identically."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dspark_sglang.drafter import load_drafter
from dspark_sglang.training.data import GenerationConfig, generate_answers, read_shard
from dspark_sglang.training.features import FeatureCache, build_feature_cache
from dspark_sglang.training.prompts import EVAL_PREFIX, Prompt, free_dataset_prompts, inject_bug
from dspark_sglang.training.trainer import TrainConfig, train

VOCAB = 96


class _Tok:
    """Minimal tokenizer: chat template = the text; ids = bytes mod VOCAB (>= 3)."""

    eos_token_id, pad_token_id = 2, 2

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "U:" + messages[0]["content"] + "\nA:"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + b % (VOCAB - 3) for b in text.encode()]}


def make_tiny_target() -> LlamaForCausalLM:
    """The pipeline tests' target: a random 4-layer Llama over _Tok's ids (seed 0, frozen, tied embeddings) that
    never generates id 0."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=2, pad_token_id=2, bos_token_id=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    model.generation_config.eos_token_id = 2
    model.generation_config.suppress_tokens = [0]          # id 0 is the drafters' mask token: never in the data
    return model


@pytest.fixture(scope="module")
def tiny_target():
    return make_tiny_target()


PROMPTS = [Prompt(f"p{i}", "toy", "hello " * (1 + i % 3) + str(i)) for i in range(7)]
GEN = GenerationConfig(max_new_tokens=6, batch_size=3)


def test_free_prompts_skip_eval_prefix(tmp_path):
    (tmp_path / "gsm8k.jsonl").write_text("".join(json.dumps({"turns": [f"q{i}"]}) + "\n" for i in range(503)))
    (tmp_path / "humaneval.jsonl").write_text(json.dumps({"turns": ["h"]}) + "\n")
    got = free_dataset_prompts(tmp_path)
    assert [p.text for p in got] == ["q500", "q501", "q502"] and EVAL_PREFIX["gsm8k"] == 500


def test_inject_bug_changes_exactly_one_line():
    import random
    src = "def f(a, b):\n    if a < b:\n        return a + 1\n    return b"
    bug = inject_bug(src, random.Random(0))
    diff = [(x, y) for x, y in zip(src.splitlines(), bug.splitlines()) if x != y]
    assert len(diff) == 1


def test_generation_resumes_after_kill(tiny_target, tmp_path):
    shard = tmp_path / "answers.jsonl"
    full = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "full.jsonl", GEN, progress=False)
    # "Kill" after the first batch, with a torn half-written line at the end.
    first = generate_answers(tiny_target, _Tok(), PROMPTS[:3], shard, GEN, progress=False)
    with shard.open("a") as f:
        f.write('{"uid": "p3", "sour')
    resumed = generate_answers(tiny_target, _Tok(), PROMPTS, shard, GEN, progress=False)
    assert [r["uid"] for r in read_shard(shard)] == [p.uid for p in PROMPTS]
    assert len(first) == 3 and len(resumed) == 7
    assert resumed == full                                  # per-batch seeds: same answers either way
    assert all(r["answer_ids"] for r in resumed)


def test_feature_cache_resumes(tiny_target, tmp_path):
    recs = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GEN, progress=False)
    build_feature_cache(tiny_target, recs[:4], tmp_path / "f", [0, 2], batch_tokens=40, progress=False)
    with open(tmp_path / "f" / "features.bin", "ab") as f:                         # torn tail of a kill
        f.write(b"\0" * 100)
    meta = build_feature_cache(tiny_target, recs, tmp_path / "f", [0, 2], batch_tokens=40, progress=False)
    cache = FeatureCache(tmp_path / "f")
    assert len(cache) == 7 and meta["bytes_per_token"] == 2 * 3 * 32
    assert meta["total_tokens"] == sum(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in recs)
    e = {e.uid: i for i, e in enumerate(cache.entries)}["p5"]
    rec = next(r for r in recs if r["uid"] == "p5")
    ids, ctx, final, prompt_len = cache.sequence(e)
    assert ids.tolist() == rec["prompt_ids"] + rec["answer_ids"] and prompt_len == len(rec["prompt_ids"])
    out = tiny_target(input_ids=ids.view(1, -1), output_hidden_states=True)
    torch.testing.assert_close(ctx[:, 32:64].float(), out.hidden_states[3][0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(tiny_target.lm_head(final.float()), out.logits[0], rtol=1e-2, atol=1e-2)


def _train_cfg(**kw):
    drafter = dict(num_hidden_layers=1, block_size=3, markov_rank=4, target_layer_ids=[0, 2], mask_token_id=0)
    fields = dict(drafter=drafter, steps=6, batch_seqs=2, anchors_per_seq=3, save_every=100, holdout=1,
                  dtype="float32", vocab_subset=40)
    return TrainConfig(**(fields | kw))


def test_training_resume_is_identical(tiny_target, tmp_path):
    recs = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(tiny_target, recs, tmp_path / "f", [0, 2], progress=False)
    straight = train(tiny_target, tmp_path / "f", tmp_path / "run_a", _train_cfg(), progress=False)
    train(tiny_target, tmp_path / "f", tmp_path / "run_b", _train_cfg(), max_steps_this_call=4, progress=False)
    torch.manual_seed(123)                                   # a new process would start from another RNG state
    resumed = train(tiny_target, tmp_path / "f", tmp_path / "run_b", _train_cfg(), out_dir=tmp_path / "out",
                    progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    log_a = [json.loads(l)["loss"] for l in (tmp_path / "run_a" / "loss_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(l)["loss"] for l in (tmp_path / "run_b" / "loss_log.jsonl").read_text().splitlines()]
    assert log_a == log_b and len(log_a) == 6
    assert log_a[0] != log_a[-1]                                  # it trains on something
    loaded = load_drafter(str(tmp_path / "out"), tiny_target.config.to_dict(), tiny_target.get_input_embeddings(),
                          tiny_target.get_output_embeddings())
    assert "embed_tokens.weight" not in loaded.state_dict()
    for (name, a), (_, b) in zip(straight.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_resumed_run_keeps_its_training_vocabulary_when_the_cache_grows(tiny_target, tmp_path):
    """The softmax support is pinned in the checkpoint: sequences appended to the cache after a kill (the repo /
    features stages) do not change it for the rest of the run or its export."""
    from dspark_sglang.training.trainer import vocab_subset
    recs = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(tiny_target, recs, tmp_path / "f", [0, 2], progress=False)
    first = vocab_subset(FeatureCache(tmp_path / "f"), 40)
    train(tiny_target, tmp_path / "f", tmp_path / "run", _train_cfg(), max_steps_this_call=3, progress=False)
    more = [Prompt(f"z{i}", "toy", "~}|{zyx " * 12 + str(i)) for i in range(6)]              # other byte ids
    recs2 = generate_answers(tiny_target, _Tok(), more, tmp_path / "b.jsonl", GenerationConfig(max_new_tokens=10),
                             progress=False)
    build_feature_cache(tiny_target, recs + recs2, tmp_path / "f", [0, 2], progress=False)
    assert not torch.equal(vocab_subset(FeatureCache(tmp_path / "f"), 40), first)          # the cache's support moved
    train(tiny_target, tmp_path / "f", tmp_path / "run", _train_cfg(), out_dir=tmp_path / "out", progress=False)
    assert json.loads((tmp_path / "out" / "draft_vocab.json").read_text()) == first.tolist()


def test_micro_batches_put_each_long_sequence_alone():
    from dspark_sglang.training.trainer import micro_batches
    assert micro_batches([300, 4000, 500], 1024) == [[0, 2], [1]]
    assert micro_batches([10, 20], 1024) == [[0, 1]]                  # no long one: the old single batch
    assert micro_batches([2000, 3000], 1024) == [[0], [1]]


def test_long_sequences_train_as_micro_batches(tiny_target, tmp_path, monkeypatch):
    import dspark_sglang.training.trainer as trainer
    recs = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(tiny_target, recs, tmp_path / "f", [0, 2], progress=False)
    calls = []
    real = trainer.make_batch
    monkeypatch.setattr(trainer, "make_batch", lambda cache, ids, device: calls.append(len(ids)) or real(cache, ids, device))
    train(tiny_target, tmp_path / "f", tmp_path / "run", _train_cfg(long_seq_tokens=0), progress=False)
    assert calls == [1] * 12                                      # 6 steps x 2 sequences, each alone
    log = [json.loads(l) for l in (tmp_path / "run" / "loss_log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and log[0]["loss"] != log[-1]["loss"] and all(0 <= r["acc"] <= 1 for r in log)


def test_long_seq_share_draws_long_sequences_at_that_rate():
    from dspark_sglang.training.trainer import draw_sequences
    cfg = _train_cfg(batch_seqs=4000, long_seq_share=0.25)
    gen = torch.Generator().manual_seed(0)
    drawn = draw_sequences(list(range(10)), [7, 8], cfg, gen)
    share = sum(i in (7, 8) for i in drawn) / len(drawn)
    assert abs(share - 0.25) < 0.03 and set(drawn) == set(range(10))
    uniform = draw_sequences(list(range(10)), [7, 8], _train_cfg(batch_seqs=4000), gen)
    assert abs(sum(i in (7, 8) for i in uniform) / 4000 - 0.2) < 0.03


def test_init_from_starts_at_the_exported_weights(tiny_target, tmp_path):
    recs = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(tiny_target, recs, tmp_path / "f", [0, 2], progress=False)
    first = train(tiny_target, tmp_path / "f", tmp_path / "run_a", _train_cfg(), out_dir=tmp_path / "a", progress=False)
    zero_steps = train(tiny_target, tmp_path / "f", tmp_path / "run_b", _train_cfg(steps=0), progress=False,
                       init_from=tmp_path / "a")
    for (name, a), (_, b) in zip(first.state_dict().items(), zero_steps.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    other = _train_cfg(drafter=dict(_train_cfg().drafter, markov_rank=0))
    with pytest.raises(ValueError, match="init_from .* do not match"):
        train(tiny_target, tmp_path / "f", tmp_path / "run_c", other, progress=False, init_from=tmp_path / "a")


def test_export_with_markov_rows_over_the_draft_vocabulary(tiny_target, tmp_path):
    """markov_rows="draft_vocab": the export stores 40 Markov rows (the vocabulary subset) and loads back to
    the trained drafter's rows there; rerunning the finished run re-exports without training."""
    from safetensors import safe_open
    recs = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(tiny_target, recs, tmp_path / "f", [0, 2], progress=False)
    trained = train(tiny_target, tmp_path / "f", tmp_path / "run", _train_cfg(markov_rows="draft_vocab"),
                    out_dir=tmp_path / "rows", progress=False)
    with safe_open(str(tmp_path / "rows" / "model.safetensors"), "pt") as f:
        assert f.get_slice("markov_head.markov_w2.weight").get_shape() == [40, 4]
    loaded = load_drafter(str(tmp_path / "rows"), tiny_target.config.to_dict(), tiny_target.model.embed_tokens,
                          tiny_target.lm_head)
    ids = loaded.draft_vocab_ids
    assert ids.numel() == 40
    for name in ("markov_w1", "markov_w2"):
        got, want = getattr(loaded.markov_head, name).weight, getattr(trained.markov_head, name).weight
        torch.testing.assert_close(got[ids], want[ids], rtol=0, atol=0)
    log_lines = (tmp_path / "run" / "loss_log.jsonl").read_text().count("\n")
    train(tiny_target, tmp_path / "f", tmp_path / "run", _train_cfg(), out_dir=tmp_path / "full", progress=False)
    assert (tmp_path / "run" / "loss_log.jsonl").read_text().count("\n") == log_lines      # no step ran
    with safe_open(str(tmp_path / "full" / "model.safetensors"), "pt") as f:
        assert f.get_slice("markov_head.markov_w2.weight").get_shape() == [VOCAB, 4]


def test_prune_draft_vocab_keeps_the_most_frequent_ids_sorted():
    from dspark_sglang.training.trainer import prune_draft_vocab
    counts = torch.tensor([5, 0, 9, 9, 1, 7, 0, 3])
    assert prune_draft_vocab(torch.tensor([7, 2, 3, 5, 0]), counts, 3).tolist() == [2, 3, 5]
    assert prune_draft_vocab(torch.tensor([0, 2, 3, 5]), counts, 1).tolist() == [2]        # tie 9 / 9: lower id
    assert prune_draft_vocab(torch.tensor([1, 4, 6]), counts, 2).tolist() == [1, 4]        # tie 0 / 0: lower id
    for bad in (0, 6):
        with pytest.raises(ValueError, match="draft_vocab_size=.* must be in 1..5"):
            prune_draft_vocab(torch.tensor([7, 2, 3, 5, 0]), counts, bad)


def test_export_prunes_the_draft_vocabulary_to_the_most_frequent_answer_tokens(tiny_target, tmp_path):
    """draft_vocab_size=12: the export drafts from the 12 training-vocabulary ids most frequent among the
    cache's answer tokens, with 12 Markov rows; a finished run re-exports at another size without training."""
    from dspark_sglang.training.trainer import answer_token_counts, prune_draft_vocab, vocab_subset
    recs = generate_answers(tiny_target, _Tok(), PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(tiny_target, recs, tmp_path / "f", [0, 2], progress=False)
    cache = FeatureCache(tmp_path / "f")
    counts = answer_token_counts(cache, VOCAB)
    assert int(counts.sum()) == sum(len(r["answer_ids"]) for r in recs)
    want = prune_draft_vocab(vocab_subset(cache, 40), counts, 12)
    cfg = _train_cfg(markov_rows="draft_vocab", draft_vocab_size=12)
    train(tiny_target, tmp_path / "f", tmp_path / "run", cfg, out_dir=tmp_path / "v12", progress=False)
    assert json.loads((tmp_path / "v12" / "draft_vocab.json").read_text()) == want.tolist()
    loaded = load_drafter(str(tmp_path / "v12"), tiny_target.config.to_dict(), tiny_target.model.embed_tokens,
                          tiny_target.lm_head)
    assert loaded.draft_vocab_ids.tolist() == want.tolist()
    kept = [int(counts[i]) for i in want]
    dropped = [int(counts[i]) for i in vocab_subset(cache, 40).tolist() if i not in set(want.tolist())]
    assert min(kept) >= max(dropped) and min(kept) > 0 and len(dropped) == 28
    log_lines = (tmp_path / "run" / "loss_log.jsonl").read_text().count("\n")
    train(tiny_target, tmp_path / "f", tmp_path / "run", _train_cfg(markov_rows="draft_vocab", draft_vocab_size=5),
          out_dir=tmp_path / "v5", progress=False)
    assert (tmp_path / "run" / "loss_log.jsonl").read_text().count("\n") == log_lines      # no step ran
    five = json.loads((tmp_path / "v5" / "draft_vocab.json").read_text())
    assert len(five) == 5 and set(five) <= set(want.tolist())
    with pytest.raises(ValueError, match=r"draft_vocab_size=41 must be in 1..40"):       # before any step
        train(tiny_target, tmp_path / "f", tmp_path / "run41", _train_cfg(draft_vocab_size=41), progress=False)
    assert not (tmp_path / "run41" / "loss_log.jsonl").exists()


def test_repository_prompts_sized_deterministic_and_exclusive(tmp_path):
    from dspark_sglang.training.repository_prompts import repository_prompts
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    body = "\n".join(f"    x{j} = {j} + 1" for j in range(20))
    for i in range(6):
        funcs = "\n\n\n".join(f"def f{i}_{k}(a):\n{body}\n    return a" for k in range(8))
        (lib / (f"m{i}.py" if i < 4 else f"pkg/m{i}.py")).write_text(funcs + "\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "mbpp.jsonl").write_text("".join(json.dumps({"turns": [f"task {i}"]}) + "\n" for i in range(300)))
    kwargs = dict(datasets_dir=data, exclude={"m0.py"}, lib_dir=lib, min_chars=4000, max_chars=30000)
    prompts = repository_prompts(10, **kwargs)
    assert [p.text for p in prompts] == [p.text for p in repository_prompts(10, **kwargs)]
    assert len({p.uid for p in prompts}) == 10 and {p.source for p in prompts} >= {"repo-tests", "repo-mbpp"}
    assert all("### m0.py" not in p.text for p in prompts)
    assert any("### pkg/m5.py" in p.text for p in prompts)
    for p in prompts:
        if p.source == "repo-mbpp":
            assert int(p.text.split("task ")[1].split()[0]) >= EVAL_PREFIX["mbpp"]
        else:
            name = p.text.rsplit("```\n\n", 1)[1].split("`")[1]          # the task after the files
            assert f"def {name}(" in p.text                       # the task names a function of the files
    with pytest.raises(ValueError, match="at least 3"):
        repository_prompts(2, exclude={"m0.py", "m1.py", "m2.py", "m3.py"}, lib_dir=lib)


def test_repo_exclusions_are_every_file_a_session_pastes(tmp_path):
    from dspark_sglang.training.pipeline import repo_exclusions
    sessions = tmp_path / "s.jsonl"
    rows = [{"id": "a", "context_files": [{"path": "json/decoder.py", "content": "x"}],
             "turns": ["write tests", {"text": "now this", "files": [{"path": "csv.py", "content": "y"}]}]},
            {"id": "b", "turns": ["plain"]}]
    sessions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert repo_exclusions(sessions) == {"json/decoder.py", "csv.py"}
    assert repo_exclusions(tmp_path / "missing.jsonl") == set() and repo_exclusions(None) == set()
    shipped = Path(__file__).resolve().parents[2] / "benchmark" / "sessions" / "coding_sessions.jsonl"
    assert len(repo_exclusions(shipped)) >= 20
