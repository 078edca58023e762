"""The KPA, stage by stage and as timelines on a fake clock.

Unless a test says otherwise the config is the spec's defaults (Knative's) for a function of
concurrency 1: target 1 × 0.7 = 0.7 in system per instance, 60 s stable and 6 s panic windows, panic
at 200 %, scale up ×1000 / down ÷2 per tick, no scale-down delay, 30 s grace, 0-10 instances,
target burst capacity 211 (the gateway queue always in the path for such small functions).
Knative's own test cases, ported with their names and expected values, are in test_kpa_knative.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torpor.autoscaling.kpa import (
    KpaConfig,
    KpaDecision,
    KpaInputs,
    KpaState,
    apply_activation_scale,
    apply_bounds,
    decide,
    delay_scale_down,
    excess_burst_capacity,
    gate_scale_to_zero,
    hold_in_panic,
    next_activity,
    next_panic_state,
    rate_limited,
    raw_desired,
    scale_bounds,
)
from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.clock import FakeClock
from torpor.spec import ScalingSpec


def make_config(**overrides: Any) -> KpaConfig:
    return replace(KpaConfig.from_spec(ScalingSpec(), concurrency=1), **overrides)


def make_inputs(
    stable: float | None = 0.0,
    panic: float | None = None,
    ready: int = 1,
    reachable: bool = True,
) -> KpaInputs:
    return KpaInputs(stable, stable if panic is None else panic, ready, reachable)


def brief(decision: KpaDecision) -> tuple[int, bool, str]:
    return decision.desired, decision.panic, decision.reason


class Function:
    """One function under load: the gateway's recorder, a fake clock and the KPA's state."""

    def __init__(self, **overrides: Any) -> None:
        self.config = make_config(**overrides)
        self.clock = FakeClock(1000.0)
        self.recorder = ConcurrencyRecorder()
        self.state = KpaState()

    def load(self, in_system: int, arrivals: int = 0) -> None:
        """From now on ``in_system`` requests are in flight or queued."""
        for _ in range(arrivals):
            self.recorder.record_request(self.clock.now())
        self.recorder.record(self.clock.now(), in_system)

    def decide(self, ready: int, reachable: bool = True) -> KpaDecision:
        now = self.clock.now()
        inputs = KpaInputs.observe(self.recorder, self.config, now, ready, reachable)
        decision, self.state = decide(self.config, inputs, now, self.state)
        return decision


class TestConfig:
    def test_target_defaults_to_the_concurrency(self) -> None:
        """No target in the spec: each instance aims at its concurrency × utilisation."""
        config = KpaConfig.from_spec(ScalingSpec(), concurrency=4)
        assert config.target_concurrency == 4.0
        assert config.target_per_instance == pytest.approx(2.8)  # 4 × 0.7
        assert config.panic_window_s == 6.0  # 10 % of 60 s

    def test_target_never_exceeds_the_concurrency(self) -> None:
        """A target above what an instance can hold would under-provision; Knative caps it."""
        assert KpaConfig.from_spec(ScalingSpec(target_concurrency=2), 4).target_concurrency == 2
        assert KpaConfig.from_spec(ScalingSpec(target_concurrency=8), 4).target_concurrency == 4

    def test_invalid_knobs_are_named(self) -> None:
        """A bad config fails naming the field."""
        with pytest.raises(ValueError, match="min_instances"):
            make_config(min_instances=5, max_instances=2)

    def test_stable_window_at_least_six_seconds(self) -> None:
        """Knative's WindowMin: a stable window under 6 s is refused here as in ScalingSpec."""
        with pytest.raises(ValueError, match="stable_window_s"):
            make_config(stable_window_s=5.0)
        assert make_config(stable_window_s=6.0).stable_window_s == 6.0

    def test_panic_window_rounds_to_the_nearest_second(self) -> None:
        """Knative rounds stable × pct to the nearest second, half away from zero, minimum 1 s."""
        windows = [make_config(stable_window_s=w, panic_window_pct=p).panic_window_s
                   for w, p in ((60, 10), (45, 10), (44, 10), (6, 1), (6, 25), (100, 1.5))]
        assert windows == [6, 5, 4, 1, 2, 2]  # 6, 4.5 → 5, 4.4 → 4, 0.06 → 1, 1.5 → 2, 1.5 → 2

    def test_rps_target(self) -> None:
        """metric rps aims at target_rps × utilisation per instance, 200 × 0.7 = 140 by default."""
        config = KpaConfig.from_spec(ScalingSpec(metric="rps"), concurrency=1)
        assert (config.metric, config.target_total, config.target_per_instance) == ("rps", 200.0, 140.0)
        tuned = KpaConfig.from_spec(ScalingSpec(metric="rps", target_rps=10), concurrency=1)
        assert tuned.target_per_instance == 7.0  # not capped by the concurrency


class TestRawDesired:
    def test_rounds_up(self) -> None:
        """2.2 in system at 0.7 each needs ceil(3.14) = 4 instances."""
        assert raw_desired(2.2, make_config()) == 4

    def test_exact_multiple_is_not_rounded_past(self) -> None:
        """2.1 / 0.7 is 3.0000000000000004 in floats; it still asks for 3."""
        assert raw_desired(2.1, make_config()) == 3
        assert raw_desired(14.0, make_config()) == 20

    def test_any_load_asks_for_one(self) -> None:
        """However small, a non-zero load needs an instance; none needs none."""
        assert raw_desired(1e-12, make_config()) == 1
        assert raw_desired(0.0, make_config()) == 0

    def test_target_has_a_floor(self) -> None:
        """Knative's TargetMin: never aim below 0.01 per instance (1.0 / 0.01 = 100)."""
        assert raw_desired(1.0, make_config(target_concurrency=0.001)) == 100


class TestStable:
    def test_steady_load_sizes_to_target(self) -> None:
        """3 in system for a minute on 5 instances keeps ceil(3 / 0.7 = 4.29) = 5."""
        fn = Function()
        fn.load(3)
        fn.clock.advance(60)
        decision = fn.decide(ready=5)
        assert brief(decision) == (5, False, "stable, 3.0 in system, target 0.7×1")

    def test_stable_window_lags_a_drop(self) -> None:
        """Half a minute after load falls from 3 to 1, the 60 s average still remembers the 3."""
        fn = Function()
        fn.load(3)
        fn.clock.advance(60)
        fn.load(1)
        fn.clock.advance(30)
        # seconds 1031-1059 at 3 (29 s) + 1060-1090 at 1 (31 s) = 118 / 60 = 1.97
        assert fn.decide(ready=5).desired == 3  # ceil(1.97 / 0.7 = 2.81)
        fn.clock.advance(30)
        assert fn.decide(ready=3).desired == 2  # all 60 s at 1: ceil(1 / 0.7 = 1.43)


class TestRateLimits:
    def test_scale_up_is_capped_per_tick(self) -> None:
        """Up rate 2: 14 in system needs 20, reached by doubling the ready count each tick."""
        fn = Function(max_scale_up_rate=2.0, max_instances=100)
        fn.load(14)
        fn.clock.advance(60)
        counts = []
        for ready in (2, 4, 8, 16):
            counts.append(fn.decide(ready).desired)
            fn.clock.advance(2)
        assert counts == [4, 8, 16, 20]  # ceil(2 × 2), ceil(4 × 2), ceil(8 × 2), then 20 < 32

    def test_scale_down_is_capped_per_tick(self) -> None:
        """Down rate 2: with no load, 10 ready halve each tick, rounding down, to one."""
        fn = Function()
        fn.load(0)
        counts = []
        for ready in (10, 5, 2, 1):
            counts.append(fn.decide(ready).desired)
            fn.clock.advance(2)
        assert counts == [5, 2, 1, 1]  # floor(10 / 2), floor(5 / 2), floor(2 / 2), then
        # floor(1 / 2) = 0 asks for zero, but the last instance stays until the function was
        # active for a stable window (Knative's sequence; before issue 17 this tick gave 0)

    def test_reason_names_the_clamp(self) -> None:
        """The decision says when the rate limit, not the load, set the count."""
        decision, _ = decide(make_config(), make_inputs(0.0, ready=10), 0.0, KpaState())
        assert decision.reason == ("stable, 0.0 in system, target 0.7×1; rate-limited 0 to 5 from 10 ready")

    def test_small_up_rate_still_grows_by_one(self) -> None:
        """Knative's example: rate 1.1 on 2 ready allows ceil(2.2) = 3, not a stuck 2."""
        assert rate_limited(3, 2, make_config(max_scale_up_rate=1.1)) == 3

    def test_cold_start_is_capped_at_rate_times_one(self) -> None:
        """From 0 ready Knative counts 1: rate 2 allows ceil(2 × 1) = 2 (the default 1000 allows 1000).

        Before issue 17 torpor lifted the cap at 0 ready; Knative parity caps it.
        """
        assert rate_limited(50, 0, make_config(max_scale_up_rate=2.0)) == 2
        assert rate_limited(50, 0, make_config()) == 50
        assert rate_limited(0, 0, make_config()) == 0  # floor(max(0, 1) / 2) = 0

    def test_unreachable_has_no_lower_clamp(self) -> None:
        """Nothing routes to an unreachable function: 100 ready may drop to 1 at once."""
        assert rate_limited(1, 100, make_config(), reachable=False) == 1
        assert rate_limited(1, 100, make_config()) == 50


class TestPanic:
    def burst(self) -> Function:
        """2 instances serving 1 request for a minute, then 9 in system for 6 s (max 100)."""
        fn = Function(max_instances=100)
        fn.load(1)
        fn.clock.advance(60)
        assert brief(fn.decide(ready=2)) == (2, False, "stable, 1.0 in system, target 0.7×1")
        fn.load(9)
        fn.clock.advance(6)
        return fn

    def test_burst_enters_panic(self) -> None:
        """9 in system over the 6 s panic window wants 13 on 2 ready: 6.5× ≥ 2×, panic."""
        fn = self.burst()
        decision = fn.decide(ready=2)
        # panic: ceil(9 / 0.7 = 12.86) = 13; stable: (53 s at 1 + 7 s at 9) / 60 = 1.93 → 3
        assert brief(decision) == (13, True, "panic, 9.0 in system over 2 ready")
        assert fn.state.panic_started_at == 1066.0

    def test_no_scale_down_while_panicking(self) -> None:
        """Load gone 30 s after the trigger: panic holds the 13 it asked for."""
        fn = self.burst()
        fn.decide(ready=2)
        fn.load(0)
        fn.clock.advance(30)
        decision = fn.decide(ready=13)
        assert (decision.desired, decision.panic) == (13, True)
        assert decision.reason.endswith("; panic holds 13")

    def test_panic_grows_while_over_threshold(self) -> None:
        """A bigger burst while panicking raises the hold: 20 in system on 13 ready wants 29."""
        fn = self.burst()
        fn.decide(ready=2)
        fn.load(20)
        fn.clock.advance(6)
        assert fn.decide(ready=13).desired == 29  # ceil(20 / 0.7 = 28.57); 29 / 13 = 2.2 ≥ 2

    def test_retrigger_extends_panic(self) -> None:
        """Each tick over the threshold restarts the 60 s exit clock."""
        fn = self.burst()
        fn.decide(ready=2)  # triggered at 1066
        fn.clock.advance(50)
        fn.load(40)
        fn.clock.advance(6)
        fn.decide(ready=13)  # 40 / 0.7 → 58 on 13 ready: 4.5×, triggered again at 1122
        fn.load(0)
        fn.clock.advance(54)  # 1176: 110 s after the first trigger, 54 s after the last
        assert fn.decide(ready=58).panic
        assert fn.state.panic_triggered_at == 1122.0
        assert fn.state.panic_started_at == 1066.0

    def test_exit_after_a_full_stable_window(self) -> None:
        """Panic ends once more than 60 s passed since it last triggered, not at exactly 60 s."""
        fn = self.burst()
        fn.decide(ready=2)  # triggered at 1066
        fn.load(1)
        fn.clock.advance(60)
        assert fn.decide(ready=13).panic  # 1126: exactly 60 s, still panicking
        fn.clock.advance(2)
        decision = fn.decide(ready=13)  # 1128: 62 s, back to the stable window
        # seconds 1069-1128 all at 1: ceil(1 / 0.7 = 1.43) = 2, but ÷2 from 13 ready keeps 6
        assert brief(decision) == (
            6, False, "stable, 1.0 in system, target 0.7×1; rate-limited 2 to 6 from 13 ready"
        )
        assert fn.state.max_panic_desired == 0

    def test_panic_uses_the_larger_window(self) -> None:
        """In panic a stable count above the panic count wins (Knative: stable 50 > panic 30)."""
        panicking = KpaState(panic_started_at=0.0, panic_triggered_at=0.0, max_panic_desired=5)
        assert hold_in_panic(50, 30, panicking) == (50, replace(panicking, max_panic_desired=50))
        assert hold_in_panic(20, 30, panicking)[0] == 30

    def test_threshold_is_inclusive(self) -> None:
        """Exactly 200 %: 4 wanted on 2 ready panics, 3 does not."""
        config = make_config()
        assert next_panic_state(4, 2, 5.0, config, KpaState()).panic_triggered_at == 5.0
        assert next_panic_state(3, 2, 5.0, config, KpaState()) == KpaState()

    def test_restart_over_one_ready_starts_in_panic(self) -> None:
        """A fresh KPA taking over 3 ready instances keeps them until it has a window of data."""
        state = KpaState.new(now=500.0, ready_instances=3)
        decision, state = decide(make_config(), make_inputs(0.0, ready=3), 530.0, state)
        assert (decision.desired, decision.panic) == (3, True)
        decision, _ = decide(make_config(), make_inputs(0.0, ready=3), 561.0, state)
        assert (decision.desired, decision.panic) == (1, False)  # floor(3 / 2)
        assert KpaState.new(now=500.0, ready_instances=1) == KpaState(max_panic_desired=1, scale=1)


class TestScaleDownDelay:
    def test_holds_the_peak_for_the_delay(self) -> None:
        """Knative's story, delay 300 s: 4 at t=2 holds at t=300 and drops at t=302."""
        config = make_config(scale_down_delay_s=300.0)
        desired, state = delay_scale_down(4, 2.0, config, KpaState())
        assert desired == 4
        desired, state = delay_scale_down(0, 300.0, config, state)
        assert desired == 4  # 298 s later, inside the window
        desired, state = delay_scale_down(0, 302.0, config, state)
        assert desired == 0  # 300 s later, out

    def test_steps_down_through_smaller_peaks(self) -> None:
        """Knative's gradual story: 4, 3, 0 a minute apart come down as each peak expires."""
        config = make_config(scale_down_delay_s=300.0)
        state = KpaState()
        seen = []
        for now, wanted in ((540.0, 4), (600.0, 3), (660.0, 0), (840.0, 0), (900.0, 0)):
            desired, state = delay_scale_down(wanted, now, config, state)
            seen.append(desired)
        assert seen == [4, 4, 4, 3, 0]  # at 840 the 4 of 540 is 300 s old; at 900 the 3 is too

    def test_zero_delay_scales_down_at_once(self) -> None:
        """Without a delay the count follows the load down immediately."""
        desired, state = delay_scale_down(4, 0.0, make_config(), KpaState())
        assert desired == 4
        assert delay_scale_down(2, 0.5, make_config(), state) == (2, KpaState())

    def test_history_stays_short(self) -> None:
        """Rising counts replace the ones below them, so the window holds one entry."""
        config = make_config(scale_down_delay_s=3600.0)
        state = KpaState()
        for tick in range(100):
            _, state = delay_scale_down(tick, float(tick * 2), config, state)
        assert state.history == ((198.0, 99),)

    def test_delay_in_a_timeline(self) -> None:
        """Delay 60 s: the 5 instances for a load of 3 stay a minute after the load is gone."""
        fn = Function(scale_down_delay_s=60.0, stable_window_s=10.0)
        fn.load(3)
        fn.clock.advance(10)
        assert fn.decide(ready=5).desired == 5  # ceil(3 / 0.7 = 4.29)
        fn.load(0)
        fn.clock.advance(20)
        decision = fn.decide(ready=5)  # 10 s window empty: wants 0, ÷2 allows 2, delay holds 5
        assert decision.desired == 5
        assert decision.reason.endswith("scale-down delayed, holding 5")
        fn.clock.advance(40)
        assert fn.decide(ready=5).desired == 2  # 60 s after the 5: floor(5 / 2)


class TestScaleToZero:
    """Knative's sequence: the last instance stays until the function was active for a stable
    window, the function then goes inactive, and zero comes after the grace period (at once if the
    gateway queue was already in the path that long). Before issue 17 one timer since the last
    request did it all and reached zero 60 s after a request with the defaults."""

    def serve_one_request(self, fn: Function) -> None:
        """A request at 1000 that a new instance answers by 1001 (target 1 per instance, so the
        1 s panic window of a 10 s stable window does not panic)."""
        fn.load(1, arrivals=1)
        assert fn.decide(ready=0).desired == 1  # 1000: activating
        fn.clock.advance(1)
        fn.load(0)
        assert fn.decide(ready=1).desired == 1  # 1001: ready, active from now
        assert (fn.state.activity, fn.state.activity_since) == ("active", 1001.0)

    def test_stable_window_then_deactivate_then_grace(self) -> None:
        """Queue out of the path while serving (TBC 0): zero 30 s after going inactive."""
        fn = Function(stable_window_s=10.0, target_burst_capacity=0.0, target_utilization=1.0)
        self.serve_one_request(fn)
        assert fn.decide(ready=1).activator_in_path is False  # TBC 0: straight to the instance
        fn.clock.advance(9)  # 1010: seconds 1001-1010 empty, active only 9 s
        decision = fn.decide(ready=1)
        assert decision.desired == 1
        assert decision.reason == (
            "stable, 0.0 in system, target 1×1; active 9 s, keeping 1 for the 10 s stable window")
        fn.clock.advance(1)  # 1011: active a full window: deactivate, the scale is kept
        decision = fn.decide(ready=1)
        assert (decision.desired, decision.activator_in_path) == (1, True)
        assert decision.reason.endswith("idle for the 10 s stable window, deactivating; keeping 1")
        assert (fn.state.activity, fn.state.activity_since, fn.state.proxy_since) == (
            "inactive", 1011.0, 1011.0)
        fn.clock.advance(29)  # 1040: inactive 29 s
        assert fn.decide(ready=1).reason.endswith("inactive 29 s, keeping 1 for the 30 s grace")
        fn.clock.advance(1)  # 1041: inactive 30 s: grace over
        assert fn.decide(ready=1).desired == 0

    def test_queue_long_in_the_path_skips_the_grace(self) -> None:
        """Default TBC 211: the queue never left the path, so zero comes the tick after deactivating."""
        fn = Function(stable_window_s=10.0, target_utilization=1.0)
        self.serve_one_request(fn)
        fn.clock.advance(10)  # 1011
        assert fn.decide(ready=1).desired == 1  # deactivating
        fn.clock.advance(1)
        assert fn.decide(ready=1).desired == 0  # 1012: inactive, queue in the path for ever

    @pytest.mark.parametrize(("burst_capacity", "zero_at"), [(211.0, 1065.0), (0.0, 1093.0)])
    def test_one_short_request_with_defaults(self, burst_capacity: float, zero_at: float) -> None:
        """Defaults, a request at 1000 answered by 1001, ticks every 2 s from 1001: the window
        empties at 1060, the instance (active from 1003) has been active 60 s at 1063 and goes
        inactive; zero the next tick with the queue in the path (TBC 211), or 30 s later (TBC 0):
        65 s or 93 s after the request, Knative's 60-90 s plus the ticks."""
        fn = Function(target_burst_capacity=burst_capacity)
        fn.load(1, arrivals=1)
        fn.clock.advance(1)
        fn.load(0)
        ready, desired = 0, []
        while fn.clock.now() < 1100:
            desired.append((fn.clock.now(), fn.decide(ready).desired))
            ready = 1  # the instance started at the first tick is ready by the next
            fn.clock.advance(2)
        first_zero = next(t for t, n in desired if n == 0)
        assert first_zero == zero_at
        assert all(n == 1 for t, n in desired if t < first_zero)

    def test_pod_retention_holds_the_last_instance(self) -> None:
        """scale_to_zero_pod_retention_s 45: inactive at 1011, zero at 1056, not at 1012."""
        fn = Function(stable_window_s=10.0, scale_to_zero_pod_retention_s=45.0, target_utilization=1.0)
        self.serve_one_request(fn)
        fn.clock.advance(10)
        fn.decide(ready=1)  # 1011: deactivating
        fn.clock.advance(44)  # 1055
        assert fn.decide(ready=1).reason.endswith("inactive 44 s, keeping 1 for the 45 s retention")
        fn.clock.advance(1)
        assert fn.decide(ready=1).desired == 0

    def test_unreachable_ignores_retention_and_min(self) -> None:
        """Nothing routes to an unreachable function: min_instances and the retention do not apply."""
        config = make_config(min_instances=2, scale_to_zero_pod_retention_s=600.0)
        inactive = KpaState(scale=2, activity="inactive", activity_since=0.0, initialized=True)
        decision, _ = decide(config, make_inputs(0.0, ready=2, reachable=False), 30.0, inactive)
        assert decision.desired == 0  # inactive for the 30 s grace
        decision, _ = decide(config, make_inputs(0.0, ready=2), 30.0, inactive)
        assert decision.desired == 2  # reachable: min_instances

    def test_never_requested_stays_at_zero(self) -> None:
        """A function nobody has called has no data and nothing to scale: it stays at 0, inactive."""
        fn = Function()
        decision = fn.decide(ready=0)
        assert brief(decision) == (0, False, "no data yet; activating, keeping 0")
        assert fn.state.activity == "inactive"
        fn.clock.advance(2)
        assert brief(fn.decide(ready=0)) == (0, False, "no data yet; keeping 0")

    def test_request_arriving_at_zero_asks_for_one_at_once(self) -> None:
        """The gateway's poke right as a request queues at zero instances gets 1, not 0."""
        fn = Function()
        fn.load(0)
        fn.clock.advance(3600)
        fn.load(1, arrivals=1)
        assert fn.decide(ready=0).desired == 1  # 1/60 and 1/6 in system both round up to 1

    def test_min_instances_never_zero(self) -> None:
        """With min_instances 1 an idle function keeps one instance forever."""
        fn = Function(min_instances=1)
        fn.load(0)
        fn.clock.advance(7200)
        decision = fn.decide(ready=1)
        assert decision.desired == 1
        assert decision.reason.endswith("min_instances 1")

    def test_stages(self) -> None:
        """The gate alone: activating keeps, active keeps 1 for a window, inactive waits the grace."""
        config = make_config(stable_window_s=10.0)
        assert gate_scale_to_zero(2, 5.0, config, KpaState()) == (2, True)
        assert gate_scale_to_zero(0, 5.0, config, KpaState()) == (None, False)
        active = KpaState(activity="active", activity_since=0.0)
        assert gate_scale_to_zero(0, 9.0, config, active) == (1, True)
        assert gate_scale_to_zero(0, 10.0, config, active) == (0, False)
        inactive = KpaState(activity="inactive", activity_since=0.0, proxy_since=None)
        assert gate_scale_to_zero(0, 29.0, config, inactive) == (0, False)
        assert gate_scale_to_zero(0, 30.0, config, inactive) == (0, True)
        proxied = replace(inactive, proxy_since=-1.0)
        assert gate_scale_to_zero(0, 29.0, config, proxied) == (0, True)  # queue in path 30 s


class TestNoData:
    def test_no_data_keeps_the_scale(self) -> None:
        """No metrics (Knative's ErrNoData) is no answer, not zero: 3 instances stay 3."""
        state = KpaState(scale=3, activity="active", activity_since=0.0, initialized=True)
        decision, new_state = decide(make_config(), make_inputs(None, ready=0), 100.0, state)
        assert brief(decision) == (3, False, "no data yet; keeping 3")
        assert new_state.scale == 3

    def test_observe_ready_instance_is_data(self) -> None:
        """Nothing recorded and nothing ready is no data; a ready instance is observed idle (0.0)."""
        recorder, config = ConcurrencyRecorder(), make_config()
        assert KpaInputs.observe(recorder, config, 10.0, 0) == KpaInputs(None, None, 0)
        assert KpaInputs.observe(recorder, config, 10.0, 1) == KpaInputs(0.0, 0.0, 1)

    def test_initial_instance_held_for_a_stable_window(self) -> None:
        """initial_instances 1, never called: 1 at once, kept while active for 60 s, then 0.

        Before issue 17 the first tick averaged 0.0 and the instance went as soon as it was ready.
        """
        fn = Function(initial_instances=1)
        decision = fn.decide(ready=0)
        assert brief(decision) == (1, False, "no data yet; initial scale 1")
        fn.clock.advance(2)
        assert fn.decide(ready=1).desired == 1  # 1002: initial scale reached, held this tick
        assert (fn.state.activity, fn.state.activity_since) == ("active", 1002.0)
        counts = []
        for _ in range(32):  # 1004 .. 1066, ticks every 2 s
            fn.clock.advance(2)
            counts.append(fn.decide(ready=1).desired)
        assert counts[:29] == [1] * 29  # through 1060: active under 60 s
        assert counts[29:] == [1, 0, 0]  # 1062: active 60 s, deactivating; 1064: zero


class TestActivationScale:
    def test_stage(self) -> None:
        """Any load asks for at least activation_scale; no load asks for none."""
        config = make_config(activation_scale=3)
        assert [apply_activation_scale(n, raw, config) for n, raw in ((1, 1), (0, 0), (5, 5))] == [3, 0, 5]

    def test_scale_up_from_zero(self) -> None:
        """activation_scale 3: a request at zero starts 3; the load keeps 3; idle lets them go."""
        fn = Function(activation_scale=3, stable_window_s=10.0, target_utilization=1.0)
        fn.load(0)
        fn.clock.advance(100)
        assert fn.decide(ready=0).desired == 0
        fn.load(1, arrivals=1)
        decision = fn.decide(ready=0)  # 1100: stable 1/10 → 1, raised to 3
        assert brief(decision) == (
            3, False, "stable, 0.1 in system, target 1×1; activation scale 3")
        fn.clock.advance(2)
        assert fn.decide(ready=3).desired == 3  # 0.3 in system needs 1; activation keeps 3
        fn.load(0)
        fn.clock.advance(10)
        assert fn.decide(ready=3).desired == 1  # no load: floor(3 / 2), activation scale off


class TestBurstCapacity:
    def test_excess_burst_capacity(self) -> None:
        """floor(ready × total − TBC − panic): 2 × 10 − 5 − 12 = 3; TBC 0 → 0; TBC −1 → −1."""
        config = make_config(target_concurrency=10.0, target_burst_capacity=5.0)
        assert excess_burst_capacity(12.0, 2, config) == 3
        assert excess_burst_capacity(16.5, 2, config) == -2  # floor(−1.5)
        assert excess_burst_capacity(99.0, 0, replace(config, target_burst_capacity=0.0)) == 0
        assert excess_burst_capacity(0.0, 99, replace(config, target_burst_capacity=-1.0)) == -1
        assert excess_burst_capacity(0.0, 1, make_config()) == -210  # defaults: 1 − 211

    def test_queue_leaves_the_path_with_spare_capacity(self) -> None:
        """TBC 5 on instances of 10: out of the path at 2 ready with 12 in system, back in at 17."""
        config = make_config(target_concurrency=10.0, target_burst_capacity=5.0, max_instances=20)
        decision, state = decide(config, make_inputs(12.0, ready=2), 0.0, KpaState())
        assert (decision.desired, decision.excess_burst_capacity, decision.activator_in_path) == (2, 3, False)
        decision, state = decide(config, make_inputs(17.0, ready=2), 2.0, state)
        assert (decision.excess_burst_capacity, decision.activator_in_path) == (-2, True)
        assert state.proxy_since == 2.0

    def test_default_always_queues(self) -> None:
        """With Knative's default 211 a small function always keeps the gateway queue in the path."""
        decision, _ = decide(make_config(), make_inputs(1.0, ready=2), 0.0, KpaState())
        assert decision.activator_in_path is True


class TestInitialScale:
    def test_holds_initial_until_reached_and_one_tick_more(self) -> None:
        """initial 3: kept while instances start and for the tick that sees 3 ready (Knative marks
        the scale initialised after scaling); then normal scaling resumes. Before issue 17 the
        floor was lifted in that same tick."""
        fn = Function(initial_instances=3)
        fn.load(0)
        decision = fn.decide(ready=0)
        assert decision.desired == 3
        assert decision.reason.endswith("initial scale 3")
        fn.clock.advance(2)
        assert fn.decide(ready=2).desired == 3
        fn.clock.advance(2)
        assert fn.decide(ready=3).desired == 3  # reached: held this tick
        assert fn.state.initialized
        fn.clock.advance(2)
        assert fn.decide(ready=3).desired == 1  # no load; ÷2 from 3 ready: floor(1.5)
        fn.clock.advance(2)
        assert fn.decide(ready=1).desired == 1  # floor(1 / 2) = 0, but active only 4 s

    def test_never_applies_again(self) -> None:
        """Once initialised the bound is min_instances again, whatever is lost later."""
        config = make_config(initial_instances=3)
        assert scale_bounds(config, reachable=True, initialized=False) == (3, 10)
        assert scale_bounds(config, reachable=True, initialized=True) == (0, 10)
        state = next_activity(3, 3, 5.0, config, KpaState())
        assert state.initialized
        assert next_activity(3, 0, 7.0, config, state).initialized

    def test_waits_for_min_when_min_is_larger(self) -> None:
        """Initialised only once max(min, initial) = 4 are ready; until then the bound is 4."""
        config = make_config(initial_instances=2, min_instances=4)
        assert scale_bounds(config, reachable=True, initialized=False) == (4, 10)
        assert not next_activity(4, 3, 0.0, config, KpaState()).initialized
        assert next_activity(4, 4, 0.0, config, KpaState()).initialized

    def test_unreachable_ignores_initial_scale(self) -> None:
        """An unreachable function may go to zero at once: no initial scale, no min."""
        config = make_config(initial_instances=3, min_instances=1)
        assert scale_bounds(config, reachable=False, initialized=False) == (0, 10)


class TestBounds:
    def test_min_and_max(self) -> None:
        """Counts below min rise to it; counts above max are cut to it; no answer is the min."""
        assert [apply_bounds(n, 2, 10) for n in (0, 2, 7, 10, 50, None)] == [2, 2, 7, 10, 10, 2]

    def test_max_caps_a_flood(self) -> None:
        """70 in system wants 100 instances; max_instances 10 allows 10."""
        fn = Function()
        fn.load(70)
        fn.clock.advance(60)
        decision = fn.decide(ready=10)
        assert decision.desired == 10  # ceil(70 / 0.7) = 100; 100 / 10 = 10× → panic too
        assert decision.reason == "panic, 70.0 in system over 10 ready; max_instances 10"


_load = st.one_of(st.just(0.0), st.floats(0.0, 40.0))  # idle often, so zero is reachable
_step = st.tuples(
    st.floats(0.5, 120.0),  # seconds since the previous tick
    _load,  # stable average
    _load,  # panic average
    st.one_of(st.integers(0, 2), st.integers(0, 30)),  # ready instances, few often
    st.booleans(),  # no data this tick (nothing recorded, nothing ready)
)


@st.composite
def _configs(draw: st.DrawFn, /, **fixed: Any) -> KpaConfig:
    max_instances = draw(st.integers(1, 20))
    knobs: dict[str, Any] = {
        "max_instances": max_instances,
        "min_instances": draw(st.integers(0, min(max_instances, 5))),
        "initial_instances": draw(st.integers(0, 8)),
        "stable_window_s": draw(st.sampled_from([6.0, 60.0])),
        "panic_threshold_pct": draw(st.sampled_from([110.0, 200.0, 1000.0])),
        "max_scale_up_rate": draw(st.sampled_from([1.1, 2.0, 1000.0])),
        "max_scale_down_rate": draw(st.sampled_from([1.1, 2.0, 10.0])),
        "scale_down_delay_s": draw(st.sampled_from([0.0, 30.0, 300.0])),
        "scale_to_zero_grace_s": draw(st.sampled_from([0.0, 30.0, 120.0])),
    }
    return make_config(**{**knobs, **fixed})


def _run(
    config: KpaConfig, steps: list[tuple[float, float, float, int, bool]]
) -> Iterator[tuple[KpaInputs, float, KpaDecision, KpaState]]:
    """Yield (inputs, now, decision, state before the tick) for each tick of a random run."""
    now, state = 0.0, KpaState()
    for gap_s, stable, panic, ready, no_data in steps:
        now += gap_s
        inputs = KpaInputs(None, None, 0) if no_data else KpaInputs(stable, panic, ready)
        decision, next_state = decide(config, inputs, now, state)
        yield inputs, now, decision, state
        state = next_state


class TestProperties:
    @given(config=_configs(), steps=st.lists(_step, max_size=30))
    def test_within_min_and_max(self, config: KpaConfig, steps: list[Any]) -> None:
        """Whatever the load, the count stays within [min_instances, max_instances]."""
        for _, _, decision, _ in _run(config, steps):
            assert config.min_instances <= decision.desired <= config.max_instances

    @given(
        config=_configs(scale_down_delay_s=0.0, initial_instances=0),
        steps=st.lists(_step, max_size=30),
    )
    def test_never_down_while_panicking(self, config: KpaConfig, steps: list[Any]) -> None:
        """From one panicking tick to the next the count never falls."""
        # Without a scale-down delay or initial scale: a delay still draining a peak from before
        # the panic, or initial scale being reached, can lower it; both predate the panic (Knative).
        # A tick without data while activating applies the bounds alone (Knative: applyBounds of
        # -1 is the min), so only ticks with data are compared.
        previous: KpaDecision | None = None
        for inputs, _, decision, _ in _run(config, steps):
            if inputs.stable_average is None:
                continue
            if previous is not None and previous.panic and decision.panic:
                assert decision.desired >= previous.desired
            previous = decision

    @settings(max_examples=200)
    @given(config=_configs(), steps=st.lists(_step, max_size=30))
    def test_zero_only_from_an_inactive_function(self, config: KpaConfig, steps: list[Any]) -> None:
        """Instances drop to zero only with min 0, an empty stable window, from an inactive function."""
        for inputs, _, decision, before in _run(config, steps):
            if decision.desired == 0 and before.scale > 0:
                assert config.min_instances == 0
                assert inputs.stable_average == 0.0
                assert before.activity == "inactive"

    @given(config=_configs(), steps=st.lists(_step, max_size=30))
    def test_no_data_never_changes_a_settled_scale(self, config: KpaConfig, steps: list[Any]) -> None:
        """A tick without data leaves the count as it was unless instances are being activated."""
        for inputs, _, decision, before in _run(config, steps):
            if inputs.stable_average is None and before.activity != "activating":
                assert decision.desired == before.scale
