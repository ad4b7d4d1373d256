"""ContextCost: a step's price is 1/SPS(B) plus the attention over the batch's committed context."""
import pytest
import torch

from dspark_sglang.scheduling import ContextCost, plan_verify_lens, sps_table_from_points
from dspark_sglang.scheduling.draft_gate import DraftGate
from dspark_sglang.scheduling.sps import extend_table

# A CPU-like profile: 30 ms at one row, +1.5 ms per extra row (16 requests × 8 rows = 128 rows covered)
TABLE = sps_table_from_points([1, 128], [0.030, 0.030 + 127 * 0.0015], 128)


def test_no_context_leaves_the_table_alone():
    cost = ContextCost(2e-6, 8e-6, width=8, base_context=64)
    assert torch.equal(cost.step_table(TABLE, num_reqs=4, context_tokens=0, max_rows=32), TABLE[:33])
    assert torch.equal(ContextCost.none().step_table(TABLE, num_reqs=4, context_tokens=10_000, max_rows=32),
                       TABLE[:33])
    assert ContextCost.none().is_zero and not cost.is_zero


def test_step_table_adds_the_context_seconds_at_the_rows_per_request():
    cost = ContextCost(2e-6, 9e-6, width=8, base_context=64)
    step = cost.step_table(TABLE, num_reqs=4, context_tokens=4 * 1000, max_rows=32)          # [33]
    assert step.shape == (33,)
    for rows in (4, 8, 20, 32):                 # 1, 2, 5 and 8 rows per request
        per_req = rows / 4
        k = 2e-6 + (9e-6 - 2e-6) * (per_req - 1) / 7
        assert 1.0 / float(step[rows]) == pytest.approx(1.0 / float(TABLE[rows]) + 4000 * k, rel=1e-9)
    # fewer rows than requests cannot happen: their context is priced at one row each
    extra = lambda b: 1.0 / float(step[b]) - 1.0 / float(TABLE[b])                       # noqa: E731
    assert extra(1) == pytest.approx(extra(4)) == pytest.approx(4000 * 2e-6)
    assert bool((step[1:] <= step[:-1]).all())                                               # non-increasing


def test_step_table_covers_max_rows_past_the_profile():
    cost = ContextCost(1e-6, 1e-6, width=4, base_context=64)
    step = cost.step_table(TABLE, num_reqs=64, context_tokens=64 * 500, max_rows=256)
    assert step.shape == (257,)
    ext = extend_table(TABLE.double(), 256)
    assert 1.0 / float(step[256]) == pytest.approx(1.0 / float(ext[256]) + 64 * 500 * 1e-6)


def test_context_tokens_counts_only_what_the_profile_lacks():
    cost = ContextCost(1e-6, 1e-6, width=4, base_context=64)
    assert cost.context_tokens([10, 64, 65, 1064]) == 1 + 1000


def test_per_token_is_linear_in_rows_and_clamped():
    cost = ContextCost(0.25, 0.75, width=5, base_context=0)
    assert cost.per_token(1.0) == 0.25 and cost.per_token(5.0) == 0.75 and cost.per_token(3.0) == 0.5
    assert cost.per_token(0.5) == 0.25 and cost.per_token(9.0) == 0.75
    rows = torch.tensor([1.0, 3.0, 9.0], dtype=torch.float64)
    assert cost.per_token(rows).tolist() == [0.25, 0.5, 0.75]
    one = ContextCost(0.25, 0.75, width=1, base_context=0)        # a one-row window has one figure
    assert one.per_token(1.0) == 0.75


def test_a_long_shared_context_makes_alg1_verify_more():
    """A fixed extra cost per step amortises over a longer accepted run: at one request with 6k tokens of
    context (attention ≈ a third of the step) Algorithm 1 admits slots it would not at 64 tokens."""
    survival = torch.tensor([[0.9, 0.8, 0.5, 0.3, 0.2, 0.12, 0.08]])                          # [1, γ]
    thr = torch.zeros(1, dtype=torch.int32)
    bare, _ = plan_verify_lens("alg1", survival, thr, TABLE, 0, 7)
    cost = ContextCost(2.5e-6, 2.5e-6, width=8, base_context=64)                   # rows add no attention
    step = cost.step_table(TABLE, num_reqs=1, context_tokens=6000, max_rows=8)
    priced, _ = plan_verify_lens("alg1", survival, thr, step, 0, 7)
    assert int(priced[0]) > int(bare[0])


def test_attention_that_grows_with_rows_makes_alg1_verify_less():
    """Where a verify row over a long context costs far more than a decode row (16 requests, long windows),
    the row-dependent part outweighs the fixed one and Algorithm 1 admits fewer slots."""
    survival = torch.full((16, 7), 0.0)
    survival[:, :4] = torch.tensor([0.8, 0.55, 0.35, 0.2])
    thr = torch.zeros(16, dtype=torch.int32)
    bare, _ = plan_verify_lens("alg1", survival, thr, TABLE, 0, 7)
    cost = ContextCost(1e-6, 40e-6, width=8, base_context=64)
    step = cost.step_table(TABLE, num_reqs=16, context_tokens=16 * 2000, max_rows=128)
    priced, _ = plan_verify_lens("alg1", survival, thr, step, 0, 7)
    assert int(priced.sum()) < int(bare.sum())


def test_from_dict_round_trips_and_names_bad_fields():
    cost = ContextCost(2e-6, 5e-6, width=16, base_context=64)
    assert ContextCost.from_dict(cost.to_dict()) == cost
    with pytest.raises(ValueError, match="per_token_full"):
        ContextCost.from_dict({"per_token_one_row": 1e-6, "width": 16, "base_context": 64})
    with pytest.raises(ValueError, match="numbers"):
        ContextCost.from_dict({**cost.to_dict(), "width": "wide"})
    for bad in (-1e-6, float("inf"), float("nan"), 2.0):      # json.load reads Infinity / NaN
        with pytest.raises(ValueError, match="finite seconds"):
            ContextCost(1e-6, bad, width=16, base_context=64)


def test_the_gate_prices_with_the_step_table():
    """Given the step's table, the gate's overheads are what that table leaves out, and its rates use it."""
    cost = ContextCost(2e-6, 2e-6, width=8, base_context=64)
    step = cost.step_table(TABLE, num_reqs=1, context_tokens=5000, max_rows=8)               # +10 ms a step
    bare, priced = DraftGate(TABLE), DraftGate(TABLE)
    for gate, table in ((bare, None), (priced, step)):
        gate.record(True, num_reqs=1, verified=3, accepted=2, num_rows=4, seconds=0.050, table=table)
        gate.record(False, num_reqs=1, verified=0, accepted=0, num_rows=1, seconds=0.042, table=table)
    assert priced.overhead_drafted[0] == pytest.approx(bare.overhead_drafted[0] - 0.010)
    assert priced.overhead_plain[0] == pytest.approx(bare.overhead_plain[0] - 0.010)
    # same measured steps, so the same predicted rates when each prices with its own table
    assert priced.predicted_rates(1, table=step) == pytest.approx(bare.predicted_rates(1))


def test_fixed_prices_every_window_at_the_one_row_figure():
    cost = ContextCost(2e-6, 9e-6, width=8, base_context=64).fixed()
    assert cost.per_token(1.0) == cost.per_token(8.0) == 2e-6 and cost.width == 8 and cost.base_context == 64
