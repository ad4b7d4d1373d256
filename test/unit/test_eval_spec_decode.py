"""SpeculativeDecoder on a tiny random Llama: greedy equals HF generate, all acceptance paths run."""
import json

import numpy as np
import pytest
import torch

from dspark_sglang.evaluation import SpeculativeDecoder, format_table, summarize
from dspark_sglang.evaluation.baseline import hf_generate
from dspark_sglang.evaluation.datasets import load_first_turns
from dspark_sglang.evaluation.drafters import random_drafter
from dspark_sglang.evaluation.records import RequestResult
from dspark_sglang.evaluation.spec_decode import append_committed
from dspark_sglang.sampling import SamplingBatch
from dspark_sglang.target.testing import tiny_llama

GAMMA = 4
PROMPTS = [torch.tensor([3, 8, 1, 22, 5]), torch.tensor([9, 14]), torch.tensor([2, 6, 6, 7, 30, 12, 1, 0])]


@pytest.fixture(scope="module")
def target():
    return tiny_llama()


@pytest.fixture(scope="module")
def drafter(target):
    return random_drafter(target, seed=1, scale=0.3, block_size=GAMMA, mask_token_id=5)


@pytest.mark.parametrize("batched", [False, True])
def test_greedy_equals_generate(target, drafter, batched):
    dec = SpeculativeDecoder(target, drafter)
    res = dec.generate(PROMPTS, 24, SamplingBatch.greedy(len(PROMPTS)), batched=batched)
    ref = hf_generate(target, PROMPTS, 24)
    assert [r.output_ids for r in res] == ref
    for r in res:
        assert all(0 <= rd.accept_len <= rd.verify_len == GAMMA for rd in r.rounds)
        # tokens = first token + Σ (accepted + 1), possibly cut at the end
        assert len(r.output_ids) <= 1 + sum(rd.accept_len + 1 for rd in r.rounds)


def test_full_acceptance_and_max_tokens_cut(target):
    """An lm_head bias that makes token 7 the argmax everywhere: target and drafter (which shares the
    lm_head) both say 7, so every round accepts all γ drafts: τ = γ + 1, and the output stops at exactly
    max_new_tokens = 1 + 2·(γ+1) - 2 (the last round's tokens are cut)."""
    model = target.model
    biased = torch.nn.Linear(32, 40, bias=True)
    with torch.no_grad():
        biased.weight.copy_(model.lm_head.weight)
        biased.bias.zero_()
        biased.bias[7] = 1e4
    old = model.get_output_embeddings()
    model.set_output_embeddings(biased)
    try:
        drafter = random_drafter(target, seed=1, block_size=GAMMA, mask_token_id=5)
        dec = SpeculativeDecoder(target, drafter)
        max_new = 1 + 2 * (GAMMA + 1) - 2
        for batched in (False, True):
            res = dec.generate(PROMPTS[:2], max_new, SamplingBatch.greedy(2), batched=batched)
            for r in res:
                assert r.output_ids == [7] * max_new
                assert [rd.accept_len for rd in r.rounds] == [GAMMA, GAMMA]
            s = summarize(res, GAMMA)
            assert s["tau"] == GAMMA + 1 and s["acceptance_at_k"] == [1.0] * GAMMA
    finally:
        model.set_output_embeddings(old)


def test_threshold_one_verifies_nothing_and_stays_lossless(target, drafter):
    """threshold 1.0: no c_k = σ(logit) reaches 1, so ℓ = 0 every round: windows hold only the anchor,
    τ = 1, verify rate 0, and the output is still the target's greedy output."""
    dec = SpeculativeDecoder(target, drafter, threshold=1.0, sts_temperatures=[2.0] * GAMMA)
    res = dec.generate(PROMPTS, 12, SamplingBatch.greedy(3), batched=True)
    assert [r.output_ids for r in res] == hf_generate(target, PROMPTS, 12)
    s = summarize(res, GAMMA)
    assert s["tau"] == 1.0 and s["verify_rate"] == 0.0
    assert all(rd.verify_len == 0 and len(rd.confidence) == GAMMA for r in res for rd in r.rounds)


def test_threshold_zero_verifies_everything(target, drafter):
    dec = SpeculativeDecoder(target, drafter, threshold=0.0)
    res = dec.generate(PROMPTS[:1], 10, SamplingBatch.greedy(1), batched=False)
    assert summarize(res, GAMMA)["verify_rate"] == 1.0


def test_sampled_run_is_reproducible(target, drafter):
    dec = SpeculativeDecoder(target, drafter)
    sampling = SamplingBatch.from_lists([1.0, 0.7, 0.0], top_k=[0, 5, 0], top_p=[1.0, 0.9, 1.0])
    runs = [dec.generate(PROMPTS, 16, sampling, torch.Generator().manual_seed(3), batched=True) for _ in range(2)]
    assert [r.output_ids for r in runs[0]] == [r.output_ids for r in runs[1]]
    # the greedy row of a mixed batch is still the target's greedy output
    assert runs[0][2].output_ids == hf_generate(target, PROMPTS[2:], 16)[0]


def test_eos_ends_request_inside_accepted_drafts():
    res = RequestResult(prompt_len=3)
    assert not append_committed(res, [4, 5], {2}, 10)
    assert append_committed(res, [6, 2, 9, 9], {2}, 10)       # EOS is the 2nd of 4 committed tokens
    assert res.output_ids == [4, 5, 6, 2] and res.finished_by_eos
    res = RequestResult(prompt_len=3)
    assert append_committed(res, [6, 7, 8], {2}, 2) and res.output_ids == [6, 7] and not res.finished_by_eos


def test_drafter_target_mismatch_is_named(target):
    other = tiny_llama(hidden_size=48, target_layer_ids=(0, 1))
    drafter = random_drafter(other, block_size=GAMMA)
    with pytest.raises(ValueError, match=r"hidden_size=48 but the target has 32.*target_layer_ids=\[0, 1\]"):
        SpeculativeDecoder(target, drafter)


def test_bad_sts_and_threshold(target, drafter):
    with pytest.raises(ValueError, match="sts_temperatures must be 4 positive floats"):
        SpeculativeDecoder(target, drafter, sts_temperatures=[1.0, 1.0])
    with pytest.raises(ValueError, match="threshold must be in"):
        SpeculativeDecoder(target, drafter, threshold=1.5)


def test_datasets_first_turn_first_lines_and_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"turns": [f"q{i}", "second"]}) for i in range(5)) + "\n")
    assert load_first_turns(f, 3) == ["q0", "q1", "q2"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        load_first_turns(tmp_path / "missing.jsonl", 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": ["ok"]}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 has no non-empty \"turns\""):
        load_first_turns(bad, 5)


def test_summary_table_mentions_every_metric(target, drafter):
    res = SpeculativeDecoder(target, drafter).generate(PROMPTS, 8, SamplingBatch.greedy(3))
    s = summarize(res, GAMMA)
    assert s["num_rounds"] == sum(len(r.rounds) for r in res)
    assert s["auc"] is None or 0.0 <= s["auc"] <= 1.0 or np.isnan(s["auc"])
    table = format_table("tiny", s)
    for word in ("tau", "verify rate", "AUC", "ECE", "P(accepted >= k)"):
        assert word in table
