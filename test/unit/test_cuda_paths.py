"""The CUDA path of every component that runs without SGLang, against its own CPU run: the offline
speculative decoder (drafter, CUDA verify kernels, target) and the trainer. Skipped without a CUDA
device; the op-level CUDA parity tests are in test/ops."""
from __future__ import annotations

import json

import pytest
import torch

from dspark_sglang.drafter import load_drafter
from dspark_sglang.evaluation import SpeculativeDecoder
from dspark_sglang.evaluation.baseline import hf_generate
from dspark_sglang.evaluation.drafters import random_drafter
from dspark_sglang.ops import native
from dspark_sglang.sampling import SamplingBatch
from dspark_sglang.target.testing import tiny_llama
from dspark_sglang.training.data import GenerationConfig, generate_answers
from dspark_sglang.training.features import build_feature_cache
from dspark_sglang.training.trainer import train
from test.unit.test_training_pipeline import PROMPTS as TRAIN_PROMPTS
from test.unit.test_training_pipeline import _Tok, _train_cfg, make_tiny_target

pytestmark = pytest.mark.cuda

GAMMA = 4
PROMPTS = [torch.tensor([3, 8, 1, 22, 5]), torch.tensor([9, 14]), torch.tensor([2, 6, 6, 7, 30, 12, 1, 0])]


def _pair(device: str):
    """(target, drafter) on `device`, the same weights on every device."""
    target = tiny_llama()
    target.model.to(device)
    return target, random_drafter(target, seed=1, scale=0.3, block_size=GAMMA, mask_token_id=5)


@pytest.mark.parametrize("batched", [False, True])
def test_greedy_spec_decode_on_cuda_equals_generate_and_cpu(batched):
    assert native.has_kernel("verify_greedy", "cuda")
    target, drafter = _pair("cuda")
    res = SpeculativeDecoder(target, drafter).generate(PROMPTS, 24, SamplingBatch.greedy(len(PROMPTS)),
                                                       batched=batched)
    assert [r.output_ids for r in res] == hf_generate(target, PROMPTS, 24)
    cpu_target, cpu_drafter = _pair("cpu")
    cpu = SpeculativeDecoder(cpu_target, cpu_drafter).generate(PROMPTS, 24, SamplingBatch.greedy(len(PROMPTS)),
                                                               batched=batched)
    assert [r.output_ids for r in res] == [r.output_ids for r in cpu]
    assert sum(rd.accept_len for r in res for rd in r.rounds) > 0          # the CUDA drafts were accepted too


def test_sampled_spec_decode_on_cuda_is_reproducible_and_keeps_greedy_rows():
    assert native.has_kernel("verify_sampled", "cuda")
    target, drafter = _pair("cuda")
    dec = SpeculativeDecoder(target, drafter)
    sampling = SamplingBatch.from_lists([1.0, 0.7, 0.0], top_k=[0, 5, 0], top_p=[1.0, 0.9, 1.0])
    runs = [dec.generate(PROMPTS, 16, sampling, torch.Generator(device="cuda").manual_seed(3), batched=True)
            for _ in range(2)]
    assert [r.output_ids for r in runs[0]] == [r.output_ids for r in runs[1]]
    assert runs[0][2].output_ids == hf_generate(target, PROMPTS[2:], 16)[0]
    assert all(0 <= t < target.vocab_size for r in runs[0] for t in r.output_ids)


def test_training_on_cuda_follows_the_cpu_run(tmp_path):
    target = make_tiny_target()
    recs = generate_answers(target, _Tok(), TRAIN_PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(target, recs, tmp_path / "f", [0, 2], progress=False)
    cpu = train(target, tmp_path / "f", tmp_path / "run_cpu", _train_cfg(), progress=False)
    gpu = train(target, tmp_path / "f", tmp_path / "run_gpu", _train_cfg(device="cuda"), out_dir=tmp_path / "out",
                progress=False)
    assert next(gpu.parameters()).device.type == "cuda"
    logs = {d: [json.loads(l)["loss"] for l in (tmp_path / f"run_{d}" / "loss_log.jsonl").read_text().splitlines()]
            for d in ("cpu", "gpu")}
    assert len(logs["gpu"]) == 6 and logs["gpu"][0] != logs["gpu"][-1]
    torch.testing.assert_close(torch.tensor(logs["gpu"]), torch.tensor(logs["cpu"]), rtol=1e-3, atol=1e-4)
    for (name, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
        torch.testing.assert_close(b.cpu(), a.cpu(), rtol=1e-2, atol=1e-3, msg=name)
    target.cpu()
    loaded = load_drafter(str(tmp_path / "out"), target.config.to_dict(), target.get_input_embeddings(),
                          target.get_output_embeddings())
    for (name, a), (_, b) in zip(gpu.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(b, a.cpu(), msg=name)
    # The finished CUDA run re-exported with a pruned draft vocabulary and compact Markov rows.
    from dspark_sglang.training.features import FeatureCache
    from dspark_sglang.training.trainer import answer_token_counts, prune_draft_vocab, vocab_subset
    train(target, tmp_path / "f", tmp_path / "run_gpu", _train_cfg(device="cuda", markov_rows="draft_vocab",
                                                                   draft_vocab_size=12), out_dir=tmp_path / "v12",
          progress=False)
    cache = FeatureCache(tmp_path / "f")
    want = prune_draft_vocab(vocab_subset(cache, 40), answer_token_counts(cache, target.config.vocab_size), 12)
    assert json.loads((tmp_path / "v12" / "draft_vocab.json").read_text()) == want.tolist()
    pruned = load_drafter(str(tmp_path / "v12"), target.config.to_dict(), target.get_input_embeddings(),
                          target.get_output_embeddings())
    assert pruned.draft_vocab_ids.tolist() == want.tolist()


def test_training_on_cuda_resumes_after_a_kill(tmp_path):
    """A CUDA run killed after 4 steps and rerun ends where an uninterrupted one does (the checkpoint's RNG
    states are loaded back to the CPU generators they came from)."""
    target = make_tiny_target()
    recs = generate_answers(target, _Tok(), TRAIN_PROMPTS, tmp_path / "a.jsonl", GenerationConfig(max_new_tokens=10),
                            progress=False)
    build_feature_cache(target, recs, tmp_path / "f", [0, 2], progress=False)
    straight = train(target, tmp_path / "f", tmp_path / "run_a", _train_cfg(device="cuda"), progress=False)
    train(target, tmp_path / "f", tmp_path / "run_b", _train_cfg(device="cuda"), max_steps_this_call=4, progress=False)
    torch.manual_seed(123)                                   # a new process would start from another RNG state
    resumed = train(target, tmp_path / "f", tmp_path / "run_b", _train_cfg(device="cuda"), progress=False)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
