"""Losslessness of the offline speculative decoder.

(a) Real SmolLM2-135M-Instruct in fp32 with a random-weight drafter: greedy output == HF
    `generate(do_sample=False)` token for token (a divergence is reported with the target's top-2 logit
    gap at that position, to tell a bug from a floating-point near-tie).
(b) Tiny random Llama at T > 0: the joint distribution of the first 3 generated tokens from speculative
    decoding matches the target's exact distribution (chi-square goodness of fit).
"""
from pathlib import Path

import pytest
import torch
from scipy import stats

from dspark_sglang.evaluation import SpeculativeDecoder
from dspark_sglang.evaluation.baseline import hf_generate
from dspark_sglang.evaluation.datasets import encode_chat, load_first_turns
from dspark_sglang.evaluation.drafters import random_drafter
from dspark_sglang.sampling import SamplingBatch
from dspark_sglang.target import HFTarget
from dspark_sglang.target.testing import tiny_llama

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
CI_PROMPTS = [
    "What is 17 times 23?",
    "Write a Python function that reverses a string.",
    "Name three primary colors.",
    "Explain photosynthesis in one sentence.",
    "Janet has 3 apples and buys 5 more. How many apples does she have?",
    "Translate 'good morning' into French.",
]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer

    from dspark_sglang.models import smollm2_path

    path = smollm2_path()
    target = HFTarget.from_pretrained(path, [1, 15, 28], dtype=torch.float32)
    drafter = random_drafter(target, seed=0, block_size=7, mask_token_id=0)
    return target, drafter, AutoTokenizer.from_pretrained(path)


def _divergence_report(target, prompt, ours, ref) -> str:
    pos = next(i for i, (a, b) in enumerate(zip(ours + [-1], ref + [-1])) if a != b)
    prefix = torch.cat([prompt, torch.tensor(ref[:pos], dtype=torch.int64)])
    with torch.no_grad():
        logits = target.model(prefix.view(1, -1)).logits[0, -1].float()
    top = logits.topk(2)
    return (f"diverged at generated token {pos}: ours {ours[pos:pos + 3]} vs generate {ref[pos:pos + 3]}; "
            f"target top-2 {top.indices.tolist()} logit gap {float(top.values[0] - top.values[1]):.3g}")


def _check_greedy(smollm2, texts, max_new_tokens, batched=False):
    target, drafter, tok = smollm2
    prompts = [encode_chat(tok, t) for t in texts]
    dec = SpeculativeDecoder(target, drafter)
    res = dec.generate(prompts, max_new_tokens, SamplingBatch.greedy(len(prompts)), batched=batched)
    ref = hf_generate(target, prompts, max_new_tokens)
    failures = [f"prompt {i}: " + _divergence_report(target, p, r.output_ids, g)
                for i, (p, r, g) in enumerate(zip(prompts, res, ref)) if r.output_ids != g]
    assert not failures, "\n".join(failures)
    assert sum(len(r.rounds) for r in res) > 0


def test_smollm2_greedy_equals_generate(smollm2):
    _check_greedy(smollm2, CI_PROMPTS, 32)


def test_smollm2_greedy_batched_equals_generate(smollm2):
    _check_greedy(smollm2, CI_PROMPTS[:4], 24, batched=True)


@pytest.mark.slow
def test_smollm2_greedy_equals_generate_50_prompts(smollm2):
    if not DATASETS.is_dir():
        pytest.skip(f"{DATASETS} not present")
    texts = load_first_turns(DATASETS / "gsm8k.jsonl", 25) + load_first_turns(DATASETS / "humaneval.jsonl", 25)
    _check_greedy(smollm2, texts, 64)


# ---------------------------------------------------------------------------------------------- (b)
TEMPERATURE, TOP_K, NUM_TOKENS = 1.0, 4, 3


def _filtered_probs(logits: torch.Tensor) -> torch.Tensor:
    """Target distribution written independently of sampling.logits_to_probs: top-k then softmax."""
    logits = logits.double() / TEMPERATURE
    kth = logits.topk(TOP_K, dim=-1).values[..., -1:]
    return torch.where(logits >= kth, logits, torch.tensor(float("-inf"), dtype=logits.dtype)).softmax(-1)


def _exact_joint(target, prompt) -> dict[tuple[int, ...], float]:
    """P(y_1..y_3 | prompt) by enumerating the top-k supports (4 + 16 forwards)."""
    dist = {(): 1.0}
    for _ in range(NUM_TOKENS):
        nxt = {}
        for seq, p in dist.items():
            ids = torch.cat([prompt, torch.tensor(seq, dtype=torch.int64)]).view(1, -1)
            with torch.no_grad():
                probs = _filtered_probs(target.model(ids).logits[0, -1])
            for v in probs.nonzero().flatten().tolist():
                nxt[seq + (v,)] = p * float(probs[v])
        dist = nxt
    return dist


@pytest.mark.parametrize("batched,num_samples", [(True, 6000), pytest.param(False, 3000, marks=pytest.mark.slow)])
def test_tiny_llama_sampled_joint_matches_target(batched, num_samples):
    target = tiny_llama(weight_scale=2.0)
    drafter = random_drafter(target, seed=1, scale=0.3, block_size=3, mask_token_id=5)
    prompt = torch.tensor([3, 8, 1, 22, 5])
    exact = _exact_joint(target, prompt)
    dec = SpeculativeDecoder(target, drafter)
    gen = torch.Generator().manual_seed(1234)
    if batched:
        sampling = SamplingBatch.from_lists([TEMPERATURE] * num_samples, top_k=[TOP_K] * num_samples)
        res = dec.generate([prompt] * num_samples, NUM_TOKENS, sampling, gen, batched=True)
    else:
        sampling = SamplingBatch.from_lists([TEMPERATURE], top_k=[TOP_K])
        res = [dec.generate([prompt], NUM_TOKENS, sampling, gen, batched=False)[0] for _ in range(num_samples)]
    counts: dict[tuple[int, ...], int] = {}
    for r in res:
        key = tuple(r.output_ids)
        assert key in exact, f"sampled {key}, which the target gives probability 0"
        counts[key] = counts.get(key, 0) + 1
    accepted = sum(rd.accept_len for r in res for rd in r.rounds)
    assert accepted > num_samples // 20, "too few accepted drafts: the acceptance path is barely exercised"
    # Merge cells with expected count < 5 into one.
    keys = sorted(exact)
    small = [k for k in keys if exact[k] * num_samples < 5]
    big = [k for k in keys if k not in small]
    observed = [counts.get(k, 0) for k in big] + ([sum(counts.get(k, 0) for k in small)] if small else [])
    expected = [exact[k] * num_samples for k in big] + ([sum(exact[k] for k in small) * num_samples] if small else [])
    scale = num_samples / sum(expected)                  # float rounding of the exact probabilities
    p_value = stats.chisquare(observed, [e * scale for e in expected]).pvalue
    assert p_value > 0.01, f"chi-square p = {p_value:.2e} over {len(observed)} cells: not the target distribution"
