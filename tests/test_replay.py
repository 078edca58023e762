"""bench.replay: the trace window, the service-time model, and a short real replay.

The real replay sends a few seconds of the Azure LLM conversation trace (Patel et al., "Splitwise",
ISCA'24, CC-BY-4.0) to a real `torpor serve` under the default policy and checks the bounds
loosely; ``python -m bench.replay`` checks them exactly on the 5-minute window.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.replay import (
    TRACE,
    Result,
    always_on_start,
    cases_for,
    fixed_servers_latencies,
    load_trace,
    percentile,
    run_case,
    search_always_on,
    service_time,
)
from bench.replay_ray import replica_seconds, replica_starts

pytestmark = pytest.mark.timeout(180)


def test_service_time_model() -> None:
    """50 ms + 2 ms per generated token, capped at 2 s."""
    assert [service_time(n) for n in (0, 129, 975, 5000)] == pytest.approx([0.05, 0.308, 2.0, 2.0])


def test_percentile_nearest_rank() -> None:
    """p99 of 1..100 is 99; p50 of 1..4 is 2."""
    assert percentile([float(n) for n in range(100, 0, -1)], 0.99) == 99.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_load_trace_window(tmp_path: Path) -> None:
    """Offsets from the window start, every 2nd row, service times from generated tokens."""
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.0000000,10,0\n"
        "2023-11-16 18:15:47.5000000,10,100\n"
        "2023-11-16 18:15:48.2500000,10,200\n"
        "2023-11-16 18:15:49.0000000,10,300\n"
        "2023-11-16 18:15:56.0000000,10,400\n"
    )
    assert load_trace(trace, start_s=1.0, window_s=5.0, keep_every=2) == [
        (pytest.approx(1.25), pytest.approx(0.45))]  # row 2 (offset 2.25 − 1); rows 1, 3 skipped
    assert load_trace(trace, start_s=0.0, window_s=100.0, keep_every=1)[-1] == (
        pytest.approx(10.0), pytest.approx(0.85))


@pytest.mark.skipif(not TRACE.is_file(), reason="shared/traces is not beside this checkout")
def test_short_real_replay_default_policy() -> None:
    """30 s of the trace (30 requests, 9.1 busy seconds) under the default policy (auto: the
    keep-alive policy, torpor's cold starts being milliseconds): every request answered, p99
    within 1.1 × the service p99 + 0.25 s (loose: a shared machine; the bench checks it exactly),
    and at most half the instance-seconds of the 4 always-on instances the 5-minute window needs
    (the bench's goal is 60 % of them over 5 minutes)."""
    from bench.harness import Server

    arrivals = load_trace(TRACE, start_s=0.0, window_s=30.0, keep_every=2)
    server = Server()
    try:
        result = run_case(server, "auto", {"policy": "auto", "max_instances": 10}, arrivals, 30.0)
    finally:
        server.close()
    row = result.row()
    assert row["policy"].startswith("keepalive (the default auto: cold starts take ")
    assert row["failed"] == 0
    assert row["p99_s"] <= 1.1 * percentile([s for _, s in arrivals], 0.99) + 0.25
    assert result.busy_s <= row["instance_s"] <= 0.5 * 4 * 30.0


# --- the always-on baseline's search ------------------------------------------------------------

# four requests: two overlapping at 0 s (1 s each), one at 0.5 s (1 s), one alone at 5 s (0.2 s)
ARRIVALS = [(0.0, 1.0), (0.0, 1.0), (0.5, 1.0), (5.0, 0.2)]


def test_fixed_servers_latencies_first_come_first_served() -> None:
    """One server: each waits for the one before (1, 2, 2.5 s; the last alone 0.2 s); two: only the
    third waits, for the first free server at 1 s (1.5 s); three: nobody waits."""
    assert fixed_servers_latencies(ARRIVALS, 1) == pytest.approx([1.0, 2.0, 2.5, 0.2])
    assert fixed_servers_latencies(ARRIVALS, 2) == pytest.approx([1.0, 1.0, 1.5, 0.2])
    assert fixed_servers_latencies(ARRIVALS, 3) == pytest.approx([1.0, 1.0, 1.0, 0.2])


def test_always_on_start_skips_counts_the_ideal_queue_rules_out() -> None:
    """Bound 1.1 s over a 10 s window (mean busy 0.32 → at least 1): 1 and 2 servers miss it even
    with no overhead (p99 2.5 s, 1.5 s), so the search starts at 3 and says why for each."""
    start, why = always_on_start(ARRIVALS, 10.0, 1.1, max_n=10)
    assert start == 3
    assert why == [
        "mean busy instances 0.32: at least 1",
        "always-on 1: ideal queue (no overhead) p99 2.500 s > 1.100 s: a real run cannot meet it, "
        "not run",
        "always-on 2: ideal queue (no overhead) p99 1.500 s > 1.100 s: a real run cannot meet it, "
        "not run",
        "always-on 3: ideal queue p99 1.000 s ≤ 1.100 s: start here"]
    assert always_on_start(ARRIVALS, 10.0, 1.1, max_n=2)[0] == 2  # never past the largest allowed


def test_always_on_start_from_mean_busy() -> None:
    """Three 8 s requests in a 10 s window are 2.4 busy instances on average: the search starts at
    3 (fewer fall further behind for as long as such a load lasts) even where one server's ideal
    queue meets a loose bound within the window (p99 23.8 s ≤ 100 s)."""
    arrivals = [(0.0, 8.0), (0.1, 8.0), (0.2, 8.0)]
    assert fixed_servers_latencies(arrivals, 1) == pytest.approx([8.0, 15.9, 23.8])
    assert always_on_start(arrivals, 10.0, 100.0, max_n=10) == (3, [
        "mean busy instances 2.40: at least 3",
        "always-on 3: ideal queue p99 8.000 s ≤ 100.000 s: start here"])


def test_always_on_counts_given_override_the_search() -> None:
    """``--always-on 3,4`` runs those two counts among the cases (each fixed: min = max = N, the
    spec's KPA windows); ``--always-on search`` adds none there (the search runs its own)."""
    args = argparse.Namespace(policies="auto", idle_mode=False, keep_alive_s="", alibaba=False,
                              max_instances=10, always_on="3,4")
    cases = dict(cases_for(args))
    assert list(cases) == ["auto", "always_on_3", "always_on_4"]
    assert (cases["always_on_3"]["min_instances"], cases["always_on_3"]["max_instances"]) == (3, 3)
    assert cases["always_on_4"]["stable_window_s"] == 60.0
    args.always_on = "search"
    assert [case for case, _ in cases_for(args)] == ["auto"]


def _result(n: int, p99_s: float, failed: int = 0) -> Result:
    return Result(f"always_on_{n}", [p99_s] * 10, failed, 0, 0, 10.0 * n, 10.0)


def test_search_always_on_stops_at_the_first_count_meeting_the_bound() -> None:
    """Real runs from the start upward: 3 misses (1.2 s > 1.1 s), 4 fails a request although fast,
    5 meets it and is chosen; 6 is never run."""
    measured = {3: _result(3, 1.2), 4: _result(4, 1.0, failed=1), 5: _result(5, 1.05),
                6: _result(6, 1.0)}
    ran: list[int] = []

    def run(n: int) -> Result:
        ran.append(n)
        return measured[n]

    tried, chosen, why = search_always_on(run, start=3, bound_s=1.1, max_n=8)
    assert ran == [3, 4, 5]
    assert [r.case for r in tried] == ["always_on_3", "always_on_4", "always_on_5"]
    assert chosen is measured[5]
    assert why == ["always-on 3: p99 1.200 s, 0 failed: misses p99 ≤ 1.100 s",
                   "always-on 4: p99 1.000 s, 1 failed: misses p99 ≤ 1.100 s",
                   "always-on 5: p99 1.050 s ≤ 1.100 s, 0 failed: chosen"]


def test_search_always_on_gives_up_at_the_largest_count() -> None:
    """None of 3..4 meets the bound: both run, none chosen, and the last line says so."""
    tried, chosen, why = search_always_on(lambda n: _result(n, 2.0), start=3, bound_s=1.1, max_n=4)
    assert [r.case for r in tried] == ["always_on_3", "always_on_4"]
    assert chosen is None
    assert why[-1] == "no always-on count up to 4 met the bound"


# --- the Ray Serve case's replica-seconds --------------------------------------------------------


def test_replica_seconds_integrates_the_sampled_count_over_the_window() -> None:
    """Samples (time, replicas): 1 from 99 s, 3 from 100.5 s, 2 from 102 s; window [100, 103):
    1 × 0.5 + 3 × 1.5 + 2 × 1 = 7 replica-seconds; the count before 100 s is clipped off."""
    samples = [(99.0, 1), (100.5, 3), (102.0, 2)]
    assert replica_seconds(samples, 100.0, 103.0) == pytest.approx(7.0)
    assert replica_seconds(samples, 100.0, 101.0) == pytest.approx(0.5 + 3 * 0.5)
    assert replica_seconds([], 100.0, 103.0) == 0.0


def test_replica_starts_counts_the_rises_from_the_window_start() -> None:
    """1 before the window, then 3 (+2), 2, 4 (+2), 4: four starts; a rise before t0 does not count."""
    samples = [(98.0, 0), (99.0, 1), (100.5, 3), (101.0, 2), (102.0, 4), (103.0, 4)]
    assert replica_starts(samples, 100.0) == 4
    assert replica_starts(samples, 0.0) == 5
