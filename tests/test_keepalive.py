"""The keep-alive policy (``scaling.policy: keepalive``), stage by stage and as timelines.

Unless a test says otherwise: concurrency 1, 0-10 instances, cold starts measured at 12 ms, so the
keep-alive is 200 × 0.012 = 2.4 s: the policy reads the peak of ceil(2.4 + 1) = 4 one-second
buckets, the current one and 3 before it, so it looks back 3 to 4 s (never under the 2.4 s).
"""

from __future__ import annotations

from typing import Any

import pytest

from torpor.autoscaling.keepalive import (
    KEEP_ALIVE_MAX_S,
    KEEP_ALIVE_UNMEASURED_S,
    KeepAliveConfig,
    decide,
    instances_for,
    keep_alive_for,
)
from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.clock import FakeClock

COLD_START_S = 0.012


def make_config(**overrides: Any) -> KeepAliveConfig:
    knobs: dict[str, Any] = {"concurrency": 1, "min_instances": 0, "max_instances": 10}
    return KeepAliveConfig(**{**knobs, **overrides})


class Function:
    """One function's recorder on a fake clock, deciding with the keep-alive policy."""

    def __init__(self, cold_start_s: float | None = COLD_START_S, **overrides: Any) -> None:
        self.config = make_config(**overrides)
        self.clock = FakeClock(1000.0)
        self.recorder = ConcurrencyRecorder()
        self.cold_start_s = cold_start_s

    def load(self, in_system: int) -> None:
        self.recorder.record(self.clock.now(), in_system)

    def decide(self) -> int:
        return decide(self.config, self.recorder, self.clock.now(), self.cold_start_s).desired


class TestKeepAlive:
    def test_from_the_cold_start(self) -> None:
        """Ski rental: keep an idle instance as long as 200 of its cold starts take."""
        keep_s, source = keep_alive_for(make_config(), COLD_START_S)
        assert keep_s == pytest.approx(2.4)
        assert source == "200 × 12 ms cold start"

    def test_clamped(self) -> None:
        """At least one 1 s bucket; at most the industry's fixed 10 minutes."""
        assert keep_alive_for(make_config(), 0.001)[0] == 1.0  # 0.2 s → 1 s
        assert keep_alive_for(make_config(), 30.0)[0] == KEEP_ALIVE_MAX_S  # 6000 s → 600 s

    def test_unmeasured_and_fixed(self) -> None:
        """Before any cold start: 10 s. scaling.keep_alive_s overrides the measurement."""
        assert keep_alive_for(make_config(), None) == (KEEP_ALIVE_UNMEASURED_S, "no cold start measured yet")
        assert keep_alive_for(make_config(keep_alive_s=30.0), COLD_START_S) == (30.0, "scaling.keep_alive_s")

    def test_invalid_config_named(self) -> None:
        """A keep-alive under the recorder's 1 s resolution is refused, naming the field."""
        with pytest.raises(ValueError, match="keep_alive_s"):
            make_config(keep_alive_s=0.5)


class TestInstancesFor:
    def test_one_per_concurrency(self) -> None:
        """5 in system at concurrency 2 need ceil(2.5) = 3; none need none."""
        assert [instances_for(n, make_config(concurrency=2)) for n in (0, 1, 2, 5)] == [0, 1, 1, 3]


class TestTimeline:
    def test_request_at_zero_starts_one_at_once(self) -> None:
        """A request queued at zero instances asks for 1 in the same tick, with no window to fill."""
        fn = Function()
        fn.load(0)
        fn.clock.advance(3600)
        assert fn.decide() == 0
        fn.load(1)
        decision = decide(fn.config, fn.recorder, fn.clock.now(), COLD_START_S)
        assert (decision.desired, decision.keep_alive_s) == (1, pytest.approx(2.4))
        assert decision.reason == "keepalive, peak 1 in system over the last 2.4 s (200 × 12 ms cold start)"

    def test_lull_shorter_than_the_keep_alive_keeps_the_instance(self) -> None:
        """A 2 s gap between requests (under 2.4 s): the instance stays warm through it."""
        fn = Function()
        counts = []
        for _ in range(5):  # a 0.5 s request every 2.5 s, deciding every 0.5 s
            fn.load(1)
            for step in range(5):
                counts.append(fn.decide())
                fn.clock.advance(0.5)
                if step == 0:
                    fn.load(0)
        assert counts == [1] * 25

    def test_lull_longer_than_the_keep_alive_lets_it_go(self) -> None:
        """After the last request ends at 1000.5, the 4-bucket window empties at 1004: zero."""
        fn = Function()
        fn.load(1)
        fn.clock.advance(0.5)
        fn.load(0)
        seen = []
        for _ in range(10):  # 1000.5 .. 1005.0
            seen.append((fn.clock.now(), fn.decide()))
            fn.clock.advance(0.5)
        assert [t for t, n in seen if n == 0] == [1004.0, 1004.5, 1005.0]  # 3.5 s ≥ 2.4 s idle

    def test_burst_starts_one_per_request_then_returns(self) -> None:
        """6 requests at once at zero: 6 instances in the same tick; 3 s after the last, none."""
        fn = Function()
        fn.load(6)
        assert fn.decide() == 6
        fn.clock.advance(1)
        fn.load(2)  # four answered
        assert fn.decide() == 6  # the peak of 6 is within the keep-alive
        fn.clock.advance(1)
        fn.load(0)
        fn.clock.advance(2)  # 1004: buckets 1001-1004 still hold the 2 of second 1001
        assert fn.decide() == 2
        fn.clock.advance(1)  # 1005: buckets 1002-1005 hold 0 (the 2 ended exactly at 1002.0)
        assert fn.decide() == 0

    def test_steady_load_at_1_3_busy_does_not_flap(self) -> None:
        """1, 1, 2 in system each second (1.33 busy): 2 instances throughout, no start or stop."""
        fn = Function()
        counts = []
        for second in range(60):
            fn.load(2 if second % 3 == 2 else 1)
            fn.clock.advance(0.5)
            counts.append(fn.decide())
            fn.clock.advance(0.5)
        assert counts[2:] == [2] * 58  # from the first 2 on, a 2 is always within the window
        assert counts[:2] == [1, 1]

    def test_bounds_and_concurrency(self) -> None:
        """min_instances holds through idleness; max caps a flood; concurrency 4 packs requests."""
        idle = Function(min_instances=1)
        idle.load(0)
        idle.clock.advance(100)
        decision = decide(idle.config, idle.recorder, idle.clock.now(), COLD_START_S)
        assert (decision.desired, decision.reason.endswith("; min_instances 1")) == (1, True)
        flood = Function(max_instances=3, concurrency=4)
        flood.load(40)
        assert flood.decide() == 3  # ceil(40 / 4) = 10, capped
        packed = Function(concurrency=4)
        packed.load(9)
        assert packed.decide() == 3  # ceil(9 / 4)
