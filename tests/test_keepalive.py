"""The keep-alive policy (``scaling.policy: keepalive``, and ``auto`` while cold starts are fast):
its knobs, and timelines of the whole loop on the simulator's FakeClock (the server's own policy,
planner and routing code).

Unless a test says otherwise: concurrency 1, 0-10 instances, cold starts of 0.25 s (the simulated
start → ready, measured by the policy as the server measures it), so each idle instance's
keep-alive is 10 × 0.25 = 2.5 s; the first instance in routing order (the function's last to go)
keeps the 6 s stable window until 10 idle spells of the function were seen; stops, gateway
overhead and reconciler delays are 0.
"""

from __future__ import annotations

from array import array
from typing import Any

import pytest

from torpor.autoscaling.keepalive import (
    KEEP_ALIVE_MAX_S,
    KEEP_ALIVE_MIN_S,
    KEEP_ALIVE_UNMEASURED_S,
    ColdStarts,
    KeepAliveConfig,
    decide,
    instances_for,
    keep_alive_for,
    resolve,
    starts_bound,
)
from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.metering.prices import PriceTable
from torpor.sim import runner
from torpor.sim.engine import Timings
from torpor.sim.traces import FunctionTrace, Trace

COLD_START_S = 0.25
TIMINGS = Timings(cold_start_s=COLD_START_S, thaw_s=0.0, freeze_s=0.0, stop_s=0.0, overhead_s=0.0,
                  pass_delay_s=0.0)


def make_config(**overrides: Any) -> KeepAliveConfig:
    knobs: dict[str, Any] = {"concurrency": 1, "min_instances": 0, "max_instances": 10}
    return KeepAliveConfig(**{**knobs, **overrides})


def replay(*requests: tuple[float, float], **scaling: Any) -> runner.RunResult:
    """(arrival s, service s) pairs through the simulator with the keep-alive policy."""
    fn = FunctionTrace(array("d", [a for a, _ in requests]), array("d", [s for _, s in requests]))
    spec = {"name": "fn", "runtime": {"command": ["serve"]}, "concurrency": 1,
            "scaling": {"policy": "keepalive", "max_instances": 10, "stable_window_s": 6, **scaling}}
    return runner.simulate(Trace({"fn": fn}, "test", "torpor", "given"),
                           runner.validate_spec(spec, "test"), timings=TIMINGS, prices=PriceTable())


def seconds(result: runner.RunResult) -> dict[str, float]:
    return {state: round(float(value), 9) for state, value in result.state_seconds().items()}


def latencies(result: runner.RunResult) -> list[float]:
    return [round(v, 9) for v in result.latencies_s]


class TestKeepAlive:
    def test_from_the_cold_start(self) -> None:
        """Ski rental: keep an idle instance as long as 10 of its cold starts take."""
        keep_s, source = keep_alive_for(make_config(), 0.04)
        assert keep_s == pytest.approx(0.4)
        assert source == "10 × 40 ms cold start"

    def test_clamped(self) -> None:
        """At least 0.25 s (a reconciler pass and a stop take tens of ms); at most the industry's
        fixed 10 minutes."""
        assert keep_alive_for(make_config(), 0.001)[0] == KEEP_ALIVE_MIN_S == 0.25  # 0.01 s → 0.25 s
        assert keep_alive_for(make_config(), 100.0)[0] == KEEP_ALIVE_MAX_S  # 1000 s → 600 s

    def test_unmeasured_and_fixed(self) -> None:
        """Before any cold start: 2 s. scaling.keep_alive_s overrides the measurement."""
        assert keep_alive_for(make_config(), None) == (KEEP_ALIVE_UNMEASURED_S, "no cold start measured yet")
        assert KEEP_ALIVE_UNMEASURED_S == 2.0
        assert keep_alive_for(make_config(keep_alive_s=30.0), 0.02) == (30.0, "scaling.keep_alive_s")

    def test_invalid_config_named(self) -> None:
        """A keep-alive under the 0.25 s floor is refused, naming the field."""
        with pytest.raises(ValueError, match="keep_alive_s"):
            make_config(keep_alive_s=0.1)

    def test_starts_bound(self) -> None:
        """Each instance lives its cold start plus the keep-alive at least: 10 instances with 0.1 s
        starts and a 0.4 s keep-alive start at most 10 × 60 / 0.5 = 1200 a minute."""
        assert starts_bound(make_config(), 0.4, 0.1) == pytest.approx(1200.0)


class TestResolve:
    def test_auto_by_the_cold_start(self) -> None:
        """auto: the keep-alive policy up to 1 s cold starts (or none measured), the KPA above."""
        assert resolve("auto", None) == ("keepalive", "the default auto: no cold start measured yet")
        assert resolve("auto", 0.015) == ("keepalive", "the default auto: cold starts take 15 ms, "
                                                       "at most 1 s")
        assert resolve("auto", 4.2) == ("kpa", "the default auto: cold starts take 4.2 s, over 1 s")

    def test_explicit_policy_is_kept(self) -> None:
        assert resolve("kpa", 0.015) == ("kpa", "scaling.policy in the spec")
        assert resolve("keepalive", 4.2) == ("keepalive", "scaling.policy in the spec")


class TestDecide:
    def test_one_per_concurrency(self) -> None:
        """5 in system at concurrency 2 need ceil(2.5) = 3; none need none."""
        assert [instances_for(n, make_config(concurrency=2)) for n in (0, 1, 2, 5)] == [0, 1, 1, 3]

    def test_what_is_in_the_system_now_within_bounds(self) -> None:
        """3 requests in the system now ask for 3, whatever came before; min and max bound it."""
        recorder = ConcurrencyRecorder()
        recorder.record(100.0, 7)
        recorder.record(100.5, 3)
        chosen = decide(make_config(), recorder, 0.04)
        assert (chosen.desired, chosen.keep_alive_s) == (3, pytest.approx(0.4))
        assert chosen.reason == ("keepalive, 3 in system; idle instances kept 0.40 s "
                                 "(10 × 40 ms cold start), the last to go 60.00 s "
                                 "(0 idle spells seen, fewer than 10)")
        assert decide(make_config(max_instances=2), recorder, 0.04).desired == 2
        recorder.record(101.0, 0)
        assert decide(make_config(min_instances=1), recorder, 0.04).desired == 1


class TestColdStarts:
    def test_the_median_of_the_last_ones(self) -> None:
        """The first start spawns (0.8 s), later ones fork: the typical one is the median, 30 ms
        after three; only the last 9 count."""
        starts = ColdStarts()
        assert starts.typical is None
        assert [starts.observe(s) for s in (0.8, 0.02, 0.03)] == [0.8, pytest.approx(0.41), 0.03]
        for _ in range(9):
            starts.observe(0.05)
        assert starts.typical == 0.05
        assert starts.observe(0.05) == 0.05  # replaces an equal one: the same median
        assert [starts.observe(0.8) for _ in range(5)] == [0.05] * 4 + [0.8]  # 5 of the last 9
        assert starts.typical == 0.8


class TestTimeline:
    def test_lull_shorter_than_the_keep_alive_keeps_the_instance(self) -> None:
        """A 20 s request holds the first instance (ready 0.25). The request at 0.5 starts a
        second (ready 0.75, idle from 1.75); the one at 3.5 comes 1.75 s later, inside its 2.5 s
        keep-alive: warm. Idle again from 4.5, it is drained at 7.0; the first, idle from 20.25,
        keeps the function warm for 6 s (drained at 26.25)."""
        result = replay((0.0, 20.0), (0.5, 1.0), (3.5, 1.0))
        assert result.count("cold_starts") == 2
        assert latencies(result) == [20.25, 1.25, 1.0]  # in arrival order
        assert seconds(result) == {"ready": 32.25, "starting": 0.5}  # 26 + 6.25

    def test_lull_longer_than_the_keep_alive_lets_it_go(self) -> None:
        """The same, but the next request at 4.5 comes 2.75 s after the second instance went
        idle: it was drained at 4.25 when its keep-alive ended, so a third starts (ready 4.75,
        done 5.75, drained 8.25)."""
        result = replay((0.0, 20.0), (0.5, 1.0), (4.5, 1.0))
        assert result.count("cold_starts") == 3
        assert latencies(result) == [20.25, 1.25, 1.25]
        assert seconds(result) == {"ready": 33.0, "starting": 0.75}  # 26 + 3.5 + 3.5

    def test_burst_starts_one_per_request_then_returns_to_zero(self) -> None:
        """Six requests at once: each queued one starts an instance in the same pass (no average to
        move), all ready at 0.25 and done at 1.25; five are drained at 3.75 (the keep-alive), the
        first in routing order at 7.25 (the 6 s it keeps the function warm)."""
        result = replay(*[(0.0, 1.0)] * 6)
        assert result.count("cold_starts") == 6
        assert latencies(result) == [1.25] * 6
        assert seconds(result) == {"ready": 24.5, "starting": 1.5}  # 5 × 3.5 + 7

    def test_steady_load_at_1_3_busy_holds_two_without_flapping(self) -> None:
        """A 1.3 s request every second (1.3 instances busy): the request at 1 finds the first
        busy and starts a second (ready 1.25); from then on they take turns, each idle 0.7 s at a
        time, inside the keep-alive: 2 cold starts in 20 requests, none after t=1. After the last
        request (19 → 20.3) the second is drained at 22.8 (its keep-alive), the first, idle from
        19.3, at 25.3 (its 6 s)."""
        result = replay(*[(float(t), 1.3) for t in range(20)])
        assert result.count("cold_starts") == 2
        assert latencies(result) == [1.55, 1.55] + [1.3] * 18
        assert seconds(result) == {"ready": 46.6, "starting": 0.5}  # 0.25 → 25.3, 1.25 → 22.8

    def test_shorter_keep_alive_trades_starts_for_instance_seconds(self) -> None:
        """The same steady load with scaling.keep_alive_s 0.25 (fixed: for every instance, the
        first too): each instance, idle from 1.55 s after its request came, is drained 0.25 s
        later, before the next-but-one request: every request starts one (20 cold starts), and
        each instance lives 1.8 s, 1.55 of them ready."""
        result = replay(*[(float(t), 1.3) for t in range(20)], keep_alive_s=0.25)
        assert result.count("cold_starts") == 20
        assert seconds(result) == {"ready": 31.0, "starting": 5.0}

    def test_the_last_instance_learns_the_functions_idle_spells(self) -> None:
        """A 1 s request every 8 s: the instance is idle 6.75 s, past the 6 s it keeps before 10
        idle spells were seen, so each of the first 11 requests is a cold start and its instance
        is drained 7.25 s after it. The arrival at 80 records the 10th spell: the last instance
        now stays the p99 of its spells, 6.75 s, so the next five requests, 7.5 s apart (idle
        6.25 and 6.5 s), are warm; it is drained 6.75 s after the last (118.5 → 125.25)."""
        arrivals = [8.0 * n for n in range(11)] + [80 + 7.5 * k for k in range(1, 6)]
        result = replay(*[(at, 1.0) for at in arrivals])
        assert result.count("cold_starts") == 11
        assert latencies(result) == [1.25] * 11 + [1.0] * 5
        assert seconds(result) == {"ready": 115.0, "starting": 2.75}  # 10 × 7 + 80.25 → 125.25
