"""PruningChoice (dspark_sglang.scheduling.pruning_choice): prune or draft every slot, by measured time."""
from __future__ import annotations

import pytest

from dspark_sglang.scheduling.pruning_choice import PruningChoice


def _run(choice: PruningChoice, num_reqs: int, steps: int, pruned_s, full_s, batch=lambda i: None) -> list[bool]:
    """`steps` drafted steps, each timed as the mode it chose costs (a number, or a function of the step
    index) over the batch `batch(step index)`; returns the choices."""
    chosen = []
    for i in range(steps):
        prune = choice.should_prune(num_reqs)
        cost = pruned_s if prune else full_s
        choice.record(num_reqs, prune, cost(i) if callable(cost) else cost, batch=batch(i))
        chosen.append(prune)
    return chosen


def test_alternates_until_it_has_enough_pairs():
    choice = PruningChoice(min_samples=3)
    chosen = _run(choice, 1, 4, pruned_s=0.005, full_s=0.004)
    assert chosen == [True, False, True, False]      # 3 pairs: (T, F), (F, T), (T, F)
    assert choice.preferred(1) is False
    assert choice.pruned_minus_full[0] == pytest.approx(0.001)


@pytest.mark.parametrize("pruned_s, full_s, expect", [(0.0056, 0.0045, False), (0.021, 0.023, True)])
def test_settles_on_the_cheaper_mode(pruned_s, full_s, expect):
    """The two hosts' bench_drafter figures: unpruned cheaper at one request, pruned at sixteen."""
    choice = PruningChoice(min_samples=4, explore_every=32)
    chosen = _run(choice, 16 if expect else 1, 5 + 330, pruned_s, full_s)[5:]
    assert chosen.count(not expect) == pytest.approx(330 / 33, abs=1)   # the explorations only


def test_explores_the_other_mode_every_explore_every_steps():
    choice = PruningChoice(min_samples=1, explore_every=5)
    chosen = _run(choice, 1, 2 + 12, pruned_s=0.002, full_s=0.004)[2:]
    assert chosen == [True] * 5 + [False] + [True] * 5 + [False]


def test_compares_neighbouring_steps_while_drafting_time_drifts():
    """Drafting time climbs by ~75 % with the context over each 100-step request and drops at the next;
    pruning is 5 % cheaper throughout. Compared on neighbouring steps of one request, the dearer way runs only to
    explore; pairs across two requests (no batch key) mostly measure the context's drop."""
    def base(i):
        return 0.004 + 0.00003 * (i % 100)
    choice = PruningChoice(min_samples=4, explore_every=32)
    chosen = _run(choice, 1, 1000, pruned_s=lambda i: 0.95 * base(i), full_s=base, batch=lambda i: i // 100)
    assert chosen[8:].count(False) <= 992 / 33 + 2
    blind = PruningChoice(min_samples=4, explore_every=32)
    assert _run(blind, 1, 1000, pruned_s=lambda i: 0.95 * base(i), full_s=base)[8:].count(False) > 100


def test_follows_the_host_when_the_cheaper_mode_changes():
    choice = PruningChoice(min_samples=2, explore_every=8, alpha=0.5)
    _run(choice, 4, 40, pruned_s=0.008, full_s=0.007)
    assert choice.preferred(4) is False
    _run(choice, 4, 40, pruned_s=0.008, full_s=0.012)   # the unpruned way got dearer (e.g. other load)
    assert choice.preferred(4) is True


def test_classes_of_request_count_are_separate():
    choice = PruningChoice(min_samples=2)
    _run(choice, 1, 10, pruned_s=0.006, full_s=0.004)
    assert choice.preferred(1) is False and choice.preferred(3) is None
    assert choice.should_prune(3)                   # a new class tries pruning first
    _run(choice, 16, 10, pruned_s=0.020, full_s=0.030)
    assert choice.preferred(16) is True and choice.preferred(1) is False


def test_compares_seconds_per_request_within_a_class():
    """Class 4-7: 4 requests pruned in 8 ms (2 ms each) beat 7 requests unpruned in 17.5 ms (2.5 ms each)."""
    choice = PruningChoice(min_samples=1)
    choice.record(4, pruned=True, seconds=0.008)
    choice.record(7, pruned=False, seconds=0.0175)
    assert choice.preferred(5) is True


def test_an_empty_batch_is_ignored():
    choice = PruningChoice(min_samples=1)
    choice.record(1, True, 0.005)
    choice.record(0, False, 0.004)                  # no requests: no pair, no new previous step
    assert choice.pairs == {} and choice.last == {0: (None, True, 0.005)}


def test_a_pair_far_apart_in_time_is_not_a_sample():
    """A server's first drafted step (85 ms against 5) says nothing about pruning."""
    choice = PruningChoice(min_samples=1)
    choice.record(1, pruned=False, seconds=0.090)
    choice.record(1, pruned=True, seconds=0.0056)
    assert choice.preferred(1) is None
    choice.record(1, pruned=False, seconds=0.0045)
    assert choice.preferred(1) is False and choice.pruned_minus_full[0] == pytest.approx(0.0011)


@pytest.mark.parametrize("field, value", [("explore_every", 0), ("alpha", 0.0), ("alpha", 1.5), ("min_samples", 0),
                                          ("max_ratio", 1.0)])
def test_rejects_bad_settings(field, value):
    with pytest.raises(ValueError, match=field):
        PruningChoice(**{field: value})
