"""bench.keepalive_frontier: the idle-spell model that bounds per-instance keep-alive rules, and the
simulator runs it compares with, on hand-made timelines with exact values."""

from __future__ import annotations

import pytest

from bench.keepalive_frontier import (
    MIN_SPELLS,
    Outcome,
    cost_optimal_keep,
    evaluate,
    hindsight,
    idle_spells,
    online,
    simulate,
    time_of_day,
)

# requests (arrival, service): one at 0 for 1 s; 3 → 4 and 3.5 → 4.5 overlap (level 2);
# 6 → 7 and 6.2 → 7.2 overlap again
ROWS = [(0.0, 1.0), (3.0, 1.0), (3.5, 1.0), (6.0, 1.0), (6.2, 1.0)]


def test_idle_spells_per_level() -> None:
    """Level 1 idles 1 → 3 and 4.5 → 6; level 2 (the second instance) idles 4 → 6.2."""
    spells = idle_spells(ROWS)
    assert sorted(spells) == [1, 2]
    assert spells[1] == [(1.0, 2.0), (4.5, 1.5)]
    assert spells[2] == [(4.0, pytest.approx(2.2))]


def test_cost_optimal_keep_is_the_break_even() -> None:
    """Spells 0.1, 0.2, 5 s: at 1 instance-s a cold start, keeping 0.2 s (0.3 s wasted, 1 cold)
    beats dropping at once (3 colds) and keeping 5 s (5.3 s wasted); at 10 keeping 5 s wins; at
    0.05 dropping at once wins."""
    assert cost_optimal_keep([5.0, 0.1, 0.2], 1.0) == 0.2
    assert cost_optimal_keep([5.0, 0.1, 0.2], 10.0) == 5.0
    assert cost_optimal_keep([5.0, 0.1, 0.2], 0.05) == 0.0


def test_evaluate_a_fixed_keep_alive() -> None:
    """Kept 1.8 s: level 1's 2 s spell and level 2's 2.2 s one are cold starts; wasted 1.8 + 1.5 +
    1.8 s."""
    outcome = evaluate(idle_spells(ROWS), lambda _rank, _seen, _now: 1.8)
    assert outcome.cold == 2
    assert outcome.wasted_s == pytest.approx(5.1)


def test_hindsight_per_rank_and_per_segment() -> None:
    """At 1.8 instance-s a cold start, hindsight keeps level 1 through both its spells (3.5 s
    wasted, beating 3.6 for two colds and 1.5 + 1.5 + 1.8 for keeping 1.5 s) and drops level 2 at
    once (1.8 < 2.2). Per 4 s segment level 1's first spell, alone in its segment, goes too
    (1.8 < 2): 1.5 s wasted, 2 colds."""
    spells = idle_spells(ROWS)
    whole = hindsight(spells, 1.8, None)
    assert (whole.cold, whole.wasted_s) == (1, pytest.approx(3.5))
    split = hindsight(spells, 1.8, 4.0)
    assert (split.cold, split.wasted_s) == (2, pytest.approx(1.5))


def test_online_rule_keeps_the_fixed_keep_alive_until_it_has_spells() -> None:
    """Before MIN_SPELLS spells the rule answers the fixed keep-alive, then their cost optimum
    over the last ``recent``."""
    rule = online(1.0, 3, fixed_s=2.0)
    assert rule(1, [0.1] * (MIN_SPELLS - 1), 0.0) == 2.0
    assert rule(1, [9.0] * (MIN_SPELLS - 3) + [0.1, 0.2, 5.0], 0.0) == 0.2


def test_time_of_day_rule_learns_from_earlier_days() -> None:
    """Five spells of 0.3 s in level 1's first 10 s the day before, at 1 instance-s a cold start:
    keep 0.3 s there; elsewhere (and for level 2) the fixed keep-alive."""
    history = [{1: [(float(t), 0.3) for t in range(5)]}]
    rule = time_of_day(history, 1.0, 10.0, fixed_s=2.0)
    assert rule(1, [], 4.0) == 0.3
    assert rule(1, [], 12.0) == 2.0
    assert rule(2, [], 4.0) == 2.0


def test_simulate_a_fixed_keep_alive() -> None:
    """Requests at 0 and 5 s of 0.5 s, kept 1 s, 20 ms cold starts, 10 ms stops: each instance
    lives 0 → 1.53 s (ready 0.02, idle from 0.52, drained at 1.52), 3.06 instance-s, 2.06 of
    them wasted; both requests cold."""
    outcome = simulate([(0.0, 0.5), (5.0, 0.5)], 10.0, {"policy": "keepalive", "keep_alive_s": 1.0})
    assert (outcome.cold, outcome.starts, outcome.frozen_s) == (2, 2, 0.0)
    assert outcome.wasted_s == pytest.approx(2.06)
    assert Outcome(1, 2.0).beats(outcome) and not Outcome(2, 1.0).beats(outcome)
