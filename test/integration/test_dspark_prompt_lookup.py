"""The worker's choice between the drafter's block and a prompt-lookup block
(`DSparkServeWorker._prompt_lookup_rows`): which rows are replaced, and that a replaced row carries the
lookup tokens, one-hot q, the lookup survival and its threshold length. Losslessness of greedy serving
with lookups on is test_greedy_matches_no_speculation in test/e2e/test_server_dspark.py (default flags)."""
from __future__ import annotations

from array import array
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("sglang")

from dspark_sglang.drafter.block import DraftBlock  # noqa: E402
from dspark_sglang.sampling import SamplingBatch  # noqa: E402
from dspark_sglang.serving.prompt_lookup import PromptLookup  # noqa: E402
from dspark_sglang.serving.worker import DSparkServeWorker  # noqa: E402

GAMMA, VOCAB = 4, 16


def _worker() -> DSparkServeWorker:
    worker = DSparkServeWorker.__new__(DSparkServeWorker)           # no engine: only the lookup step
    worker.gamma, worker.device = GAMMA, torch.device("cpu")
    worker.prompt_lookup = PromptLookup(GAMMA, n_max=3, n_min=2)
    worker.config = SimpleNamespace(threshold=0.3)
    return worker


def _req(rid, prompt, output):
    return SimpleNamespace(rid=rid, origin_input_ids=prompt, output_ids=array("q", output))


def _block(num_reqs):
    ids = torch.full((num_reqs, GAMMA), 15, dtype=torch.int64)
    probs = torch.full((num_reqs, GAMMA, VOCAB), 1.0 / VOCAB)
    return DraftBlock(draft_ids=ids, draft_probs=probs, conf_logits=torch.zeros(num_reqs, GAMMA))


def test_lookup_replaces_only_rows_where_it_is_expected_longer():
    worker = _worker()
    reqs = [_req("a", [1, 2, 3, 4, 5, 6, 1, 2], [3]),        # "2 3" and "1 2 3" recur: lookup 4 5 6 1
            _req("b", [1, 2, 3, 4, 5, 6, 1, 2], [3]),        # same lookup, but the drafter is confident
            _req("c", [9, 8, 7], [6])]                         # nothing recurs
    anchors = torch.tensor([3, 3, 6])
    survival = torch.tensor([[0.2, 0.04, 0.0, 0.0], [0.9, 0.8, 0.7, 0.6], [0.1, 0.0, 0.0, 0.0]])
    thr = torch.tensor([0, 4, 0], dtype=torch.int32)
    block = _block(3)
    sampling = SamplingBatch.from_lists([0.0, 0.7, 0.7], [0, 0, 0], [1.0, 1.0, 1.0])
    chosen = worker._prompt_lookup_rows(reqs, anchors, sampling, block, survival, thr)
    assert list(chosen) == [0] and chosen[0].match_len == 3 and chosen[0].tokens.tolist() == [4, 5, 6, 1]
    assert block.draft_ids[0].tolist() == [4, 5, 6, 1] and block.draft_ids[1].tolist() == [15] * GAMMA
    assert torch.equal(block.draft_probs[0].argmax(-1), block.draft_ids[0])
    assert torch.equal(block.draft_probs[0].sum(-1), torch.ones(GAMMA))       # one-hot rows
    p = worker.prompt_lookup.acceptance.prior
    torch.testing.assert_close(survival[0], torch.tensor([p, p ** 2, p ** 3, p ** 4]))   # the prior per slot
    assert survival[1].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6])
    assert thr.tolist() == [4, 4, 0]                          # 0.8⁴ = 0.41 ≥ 0.3: all four slots


def test_learned_rejections_hand_the_rows_back_to_the_drafter():
    worker = _worker()
    for _ in range(50):                                        # 3-token matches are rejected at slot 1
        worker.prompt_lookup.acceptance.record(3, True, verified=4, accepted=0)
    reqs = [_req("a", [1, 2, 3, 4, 5, 6, 1, 2], [3])]
    survival = torch.tensor([[0.2, 0.04, 0.0, 0.0]])
    block = _block(1)
    chosen = worker._prompt_lookup_rows(reqs, torch.tensor([3]), SamplingBatch.greedy(1), block, survival,
                                        torch.zeros(1, dtype=torch.int32))
    assert chosen == {} and block.draft_ids[0].tolist() == [15] * GAMMA


def test_lookup_only_plan_verifies_lookup_rows_only():
    """The plain-step variant: no drafter block; requests without a lookup block verify nothing."""
    worker = _worker()
    worker.config = SimpleNamespace(threshold=0.3, policy="alg1")
    worker.vocab_size, worker.max_len = VOCAB, GAMMA
    flat = torch.tensor([20.0] * 64, dtype=torch.float64)      # the step's SPS table, flat: every admitted slot pays
    reqs = [_req("a", [1, 2, 3, 4, 5, 6, 1, 2], [3]), _req("c", [9, 8, 7], [6])]
    survival = torch.zeros(2, GAMMA)
    block, lens, looked_up = worker._lookup_only_plan(reqs, torch.tensor([3, 6]), SamplingBatch.from_lists([0.0, 0.9]),
                                                      False, survival, flat)
    assert list(looked_up) == [0] and lens.tolist() == [4, 0]
    assert block.draft_ids[0].tolist() == [4, 5, 6, 1] and block.draft_ids[1].tolist() == [0] * GAMMA
    assert torch.equal(block.draft_probs[0].sum(-1), torch.ones(GAMMA)) and block.draft_probs[1].sum() == 0
    ruinous = torch.tensor([20.0] * 3 + [1.0] * 61, dtype=torch.float64)   # rows past R=2 are ruinous
    block, lens, looked_up = worker._lookup_only_plan(reqs, torch.tensor([3, 6]), SamplingBatch.greedy(2), True,
                                                      torch.zeros(2, GAMMA), ruinous)
    assert block is None and looked_up == {} and lens.tolist() == [0, 0]


def test_lookup_block_longer_than_the_drafter_widens_q_and_caps_drafter_rows():
    """A verify window G wider than the drafter's γ (--dspark-lookup-max-len): a lookup row verifies its
    whole copy (q widened with one-hot slots), a drafter row at most γ even under the static policy."""
    draft_gamma, window = 2, 6
    worker = _worker()
    worker.gamma, worker.draft_gamma = window, draft_gamma
    worker.prompt_lookup = PromptLookup(window, n_max=3, n_min=2)
    worker.config = SimpleNamespace(threshold=0.3, policy="static")
    worker.min_len, worker.draft_max_len, worker.max_len = 0, draft_gamma, window
    worker.can_prune, worker.generator = False, None
    flat = torch.tensor([20.0] * 64, dtype=torch.float64)          # the step's SPS table
    worker.sts_temperatures, worker.sts_biases = torch.ones(draft_gamma), torch.zeros(draft_gamma)
    worker.contexts = SimpleNamespace(stacked=lambda rids: None)
    drafted = DraftBlock(draft_ids=torch.full((2, draft_gamma), 15, dtype=torch.int64),
                         draft_probs=torch.full((2, draft_gamma, VOCAB), 1.0 / VOCAB),
                         conf_logits=torch.full((2, draft_gamma), -3.0))                # confidence 0.05
    worker.drafter = SimpleNamespace(propose=lambda *args, **kwargs: drafted)
    reqs = [_req("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2], [3]),     # "1 2 3" recurs: copy 4 5 6 7 8 9
            _req("b", [9, 8, 7], [6])]                            # nothing recurs: the drafter's block
    sampling = SamplingBatch.from_lists([0.7, 0.7], [0, 0], [1.0, 1.0])
    block, survival, lens, looked_up = worker._draft_and_plan(reqs, torch.tensor([3, 6]), torch.tensor([11, 4]),
                                                              sampling, all_greedy=False, table=flat)
    assert list(looked_up) == [0] and looked_up[0].tokens.tolist() == [4, 5, 6, 7, 8, 9]
    assert lens.tolist() == [window, draft_gamma]
    assert block.draft_ids.tolist() == [[4, 5, 6, 7, 8, 9], [15, 15, 0, 0, 0, 0]]
    assert block.draft_probs.shape == (2, window, VOCAB)
    assert torch.equal(block.draft_probs[0].argmax(-1), block.draft_ids[0])
    assert torch.equal(block.draft_probs[0].sum(-1), torch.ones(window))               # one-hot on all 6
    assert block.draft_probs[1, draft_gamma:].sum() == 0                              # never verified
    assert survival.shape == (2, window) and survival[1, draft_gamma:].sum() == 0
