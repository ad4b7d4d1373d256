"""DraftGate (dspark_sglang.scheduling.draft_gate): draft or plain-decode, from past steps only."""
from __future__ import annotations

import pytest
import torch

from dspark_sglang.scheduling.draft_gate import DraftGate

FLAT = torch.full((256,), 20.0)    # SPS 20/s = 50 ms at every B: verify rows are free


def _drafted(gate, num_reqs, accepted_per_req, verified_per_req, seconds):
    gate.record(True, num_reqs=num_reqs, verified=round(verified_per_req * num_reqs),
                accepted=round(accepted_per_req * num_reqs),
                num_rows=num_reqs + round(verified_per_req * num_reqs), seconds=seconds)


def test_drafts_until_a_drafted_step_is_measured():
    gate = DraftGate(FLAT)
    assert gate.predicted_rates(8) is None and gate.should_draft(8)


def test_keeps_drafting_when_drafts_pay_for_their_cost():
    """1 accepted draft per request doubles the tokens for 20 % more time: draft."""
    gate = DraftGate(FLAT)
    _drafted(gate, 4, accepted_per_req=1.0, verified_per_req=3.0, seconds=0.060)
    drafted, plain = gate.predicted_rates(4)
    assert drafted == pytest.approx(8 / 0.060) and plain == pytest.approx(4 / 0.050)
    assert gate.should_draft(4)


def test_stops_drafting_when_the_drafter_costs_more_than_it_earns():
    """0.1 accepted per request for 40 % more time: plain decode is faster."""
    gate = DraftGate(FLAT)
    _drafted(gate, 16, accepted_per_req=0.1, verified_per_req=0.5, seconds=0.070)
    assert not gate.should_draft(16)


def test_measured_plain_overhead_can_turn_the_decision_back():
    """The optimistic plain estimate (no overhead) loses once a plain step is measured as slow."""
    gate = DraftGate(FLAT)
    _drafted(gate, 16, accepted_per_req=0.3, verified_per_req=0.8, seconds=0.080)
    assert not gate.should_draft(16)                          # 20.8 tok / 80 ms < 16 tok / 50 ms
    gate.record(False, num_reqs=16, verified=0, accepted=0, num_rows=16, seconds=0.075)
    assert gate.overhead_plain == {4: pytest.approx(0.025 / 16)}       # class 4: 16..31 requests
    assert gate.should_draft(16)                              # 20.8 / 80 ms > 16 / 75 ms


def test_overheads_are_kept_per_request_count_class():
    """A drafted step of 2 requests 40 ms over its SPS time reads 20 ms per request; priced at 16 requests
    that is 320 ms. Until 16 requests are measured the nearest class stands in; then their own does."""
    gate = DraftGate(FLAT)
    _drafted(gate, 2, accepted_per_req=1.0, verified_per_req=2.0, seconds=0.090)
    assert gate.overhead_drafted == {1: pytest.approx(0.020)}
    assert not gate.should_draft(16)                          # 32 tok / 370 ms < 16 tok / 50 ms
    _drafted(gate, 16, accepted_per_req=1.0, verified_per_req=2.0, seconds=0.090)
    assert gate.overhead_drafted[4] == pytest.approx(0.040 / 16)
    assert gate.should_draft(16)                              # 32 tok / 90 ms > 16 tok / 50 ms
    assert gate.predicted_rates(2)[0] == pytest.approx(4 / 0.090)     # its own class, unchanged
    assert gate.predicted_rates(8)[0] == pytest.approx(16 / (0.050 + 8 * 0.040 / 16))   # nearest: class 4


def test_engine_time_between_steps_favours_drafting():
    """The engine's per-step time s is paid by both kinds of step, so it dilutes the drafter's cost:
    20.8 tokens in 80 ms vs 16 in 50 ms loses, 20.8 in 80 + 60 ms vs 16 in 50 + 60 ms wins."""
    gate = DraftGate(FLAT)
    _drafted(gate, 16, accepted_per_req=0.3, verified_per_req=0.8, seconds=0.080)
    gate.record(False, num_reqs=16, verified=0, accepted=0, num_rows=16, seconds=0.050)
    assert not gate.should_draft(16)
    gate.record_between_steps(0.060, after_drafted=False)        # the drafted kind falls back to it
    assert gate.between_after_plain == pytest.approx(0.060) and gate.should_draft(16)


def test_engine_time_after_drafted_steps_counts_against_drafting():
    """Streaming more tokens per step costs the engine more after a drafted step: 20.8 tokens in
    80 + 90 ms vs 16 in 50 + 60 ms loses again."""
    gate = DraftGate(FLAT)
    _drafted(gate, 16, accepted_per_req=0.3, verified_per_req=0.8, seconds=0.080)
    gate.record(False, num_reqs=16, verified=0, accepted=0, num_rows=16, seconds=0.050)
    gate.record_between_steps(0.060, after_drafted=False)
    assert gate.should_draft(16)
    gate.record_between_steps(0.090, after_drafted=True)
    drafted, plain = gate.predicted_rates(16)
    assert drafted == pytest.approx(21 / 0.170) and plain == pytest.approx(16 / 0.110)   # 0.3·16 rounds to 5
    assert not gate.should_draft(16)


def test_explores_after_a_run_of_plain_steps():
    gate = DraftGate(FLAT, explore_every=3)
    _drafted(gate, 8, accepted_per_req=0.0, verified_per_req=1.0, seconds=0.100)
    decisions = []
    for _ in range(8):
        drafted = gate.should_draft(8)
        decisions.append(drafted)
        if drafted:
            _drafted(gate, 8, accepted_per_req=0.0, verified_per_req=1.0, seconds=0.100)
        else:
            gate.record(False, num_reqs=8, verified=0, accepted=0, num_rows=8, seconds=0.050)
    assert decisions == [False, False, False, True, False, False, False, True]
    assert gate.drafted_steps == 3 and gate.plain_steps == 6


def test_lookup_only_steps_count_toward_exploring():
    """Steps that verified prompt-lookup blocks instead of drafting are not priced, but a run of them (mixed
    with plain steps) still ends in a drafted step, so a stale drafted-step estimate gets refreshed."""
    gate = DraftGate(FLAT, explore_every=3)
    _drafted(gate, 8, accepted_per_req=0.0, verified_per_req=1.0, seconds=0.100)
    assert not gate.should_draft(8)
    gate.record_lookup_only()
    gate.record(False, num_reqs=8, verified=0, accepted=0, num_rows=8, seconds=0.050)
    assert not gate.should_draft(8)
    gate.record_lookup_only()
    assert gate.should_draft(8)
    assert gate.plain_steps == 1 and gate.drafted_steps == 1


def test_verify_rows_are_priced_by_the_sps_table():
    """Steep SPS: a drafted step's extra verify rows cost what the table says."""
    sps = torch.tensor([20.0] * 5 + [5.0] * 60)              # 50 ms up to 4 rows, 200 ms beyond
    gate = DraftGate(sps)
    _drafted(gate, 4, accepted_per_req=1.0, verified_per_req=1.0, seconds=0.200)   # no overhead
    drafted, plain = gate.predicted_rates(4)
    assert drafted == pytest.approx(8 / 0.200) and plain == pytest.approx(4 / 0.050)
    assert not gate.should_draft(4)


def test_acceptance_is_pooled_over_request_drafts():
    """g and b are decayed sums over request-drafts: a 16-request step weighs 16 times a 1-request step."""
    gate = DraftGate(FLAT, memory=1e9)                        # no decay: plain pooled means
    _drafted(gate, 1, accepted_per_req=4.0, verified_per_req=4.0, seconds=0.05)
    _drafted(gate, 15, accepted_per_req=0.0, verified_per_req=2.0, seconds=0.05)
    assert gate.accepted_per_req == pytest.approx(4 / 16) and gate.verified_per_req == pytest.approx(34 / 16)


def test_old_request_drafts_decay():
    """With memory M the weight of a request-draft falls by 1 − 1/M per later request-draft."""
    gate = DraftGate(FLAT, memory=2.0)
    _drafted(gate, 1, accepted_per_req=2.0, verified_per_req=2.0, seconds=0.05)
    _drafted(gate, 1, accepted_per_req=0.0, verified_per_req=2.0, seconds=0.05)
    assert gate.accepted_per_req == pytest.approx((0.5 * 2.0) / 1.5)


def test_standard_error_from_the_spread_of_accepted_counts():
    gate = DraftGate(FLAT, memory=1e9)
    gate.record(True, num_reqs=4, verified=8, accepted=4, num_rows=12, seconds=0.05, accepted_sq=4)
    assert gate.accepted_stderr == pytest.approx(0.0)          # (1, 1, 1, 1): no spread
    gate = DraftGate(FLAT, memory=1e9)
    gate.record(True, num_reqs=4, verified=8, accepted=4, num_rows=12, seconds=0.05, accepted_sq=8)
    assert gate.accepted_stderr == pytest.approx((1.0 / 4) ** 0.5)   # (2, 0, 2, 0): variance 1, n = 4


def test_optimism_keeps_drafting_on_weak_evidence():
    """One request, one drafted step that accepted nothing out of a spread history: the mean says plain,
    the upper bound says the evidence is too thin to stop."""
    gate = DraftGate(FLAT, optimism=1.0, memory=1e9)
    for accepted in (2, 0, 0, 0):                           # mean 0.5, sd √0.75, n 4 -> se 0.43
        gate.record(True, num_reqs=1, verified=4, accepted=accepted, num_rows=5, seconds=0.070,
                    accepted_sq=accepted ** 2)
    drafted_mean, plain = gate.predicted_rates(1)
    assert drafted_mean == pytest.approx(1.5 / 0.070) and drafted_mean > plain    # 21.4 > 20.0 tok/s
    for accepted in (0, 0, 0, 0):                           # n 8, mean 0.25, se 0.23: 1.48 / 70 ms = 21.2
        gate.record(True, num_reqs=1, verified=4, accepted=accepted, num_rows=5, seconds=0.070, accepted_sq=0)
    assert gate.predicted_rates(1)[0] < plain                  # the mean alone says plain
    assert gate.should_draft(1)                                # the upper bound still drafts
    assert not DraftGate(FLAT, optimism=0.0, memory=1e9, accepted_sum=gate.accepted_sum,
                         accepted_sq_sum=gate.accepted_sq_sum, verified_sum=gate.verified_sum,
                         request_drafts=gate.request_drafts, overhead_drafted=gate.overhead_drafted,
                         ).should_draft(1)


@pytest.mark.parametrize("kwargs, field", [({"explore_every": 0}, "explore_every"), ({"alpha": 0.0}, "alpha"),
                                           ({"memory": 0.5}, "memory"), ({"optimism": -1.0}, "optimism")])
def test_bad_settings_are_named(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DraftGate(FLAT, **kwargs)


def test_warmup_drafts_until_enough_request_drafts_were_seen():
    """With warmup_request_drafts=8 a gate whose first drafts lose keeps drafting until 8 request-drafts
    (two steps of 4 requests) were recorded, then decides on them; without warm-up it stops at once."""
    losing = dict(num_reqs=4, accepted_per_req=0.0, verified_per_req=7.0, seconds=0.200)
    cold = DraftGate(FLAT)
    _drafted(cold, **losing)
    assert not cold.should_draft(4)
    gate = DraftGate(FLAT, warmup_request_drafts=8)
    _drafted(gate, **losing)
    assert gate.request_drafts_seen == 4 and gate.should_draft(4)
    _drafted(gate, **losing)
    assert gate.request_drafts_seen == 8 and not gate.should_draft(4)
    with pytest.raises(ValueError, match="warmup_request_drafts"):
        DraftGate(FLAT, warmup_request_drafts=-1)
