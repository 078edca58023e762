"""Knative Serving's own autoscaler test cases, replayed through torpor's KPA as the oracle.

Every row names the upstream test (and sub-case) it comes from and carries Knative's expected
values. Sources (knative/serving, main as fetched for issue 17):

- ``pkg/autoscaler/scaling/autoscaler_test.go``: ``Scale`` (raw count, rate limits, activation
  scale, panic, scale-down delay, excess burst capacity) → :func:`torpor.autoscaling.kpa.autoscale`;
- ``pkg/reconciler/autoscaling/kpa/scaler_test.go`` ``TestScaler``: bounds, initial scale and the
  scale-to-zero sequence → :func:`torpor.autoscaling.kpa.scale_target`;
- ``pkg/reconciler/autoscaling/resources/metric_test.go``: the panic window's length;
- ``pkg/autoscaler/aggregation/max/timewindow_test.go`` → :func:`delay_scale_down`;
- ``pkg/autoscaler/aggregation/bucketing_test.go`` → ``ConcurrencyRecorder.window_average``.

A row torpor answers differently on purpose carries ``torpor=`` (its own value) and ``why=``; the
test asserts torpor's value, so a difference can never appear or vanish unnoticed. Upstream cases
not ported at all are listed in ``NOT_PORTED`` with the reason.

Knative's test harness: target value TV with total TV / 0.75 (utilisation 0.75), panic threshold
200 %, rates ×10 / ÷10, 60 s stable window; the scaler tests use a 300 s window, a 60 s grace
and no pod retention. Knative's default initial scale 1 is torpor's initial_instances 0 (Knative
creates the deployment with 1 replica; see ``scale_bounds``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from torpor.autoscaling.kpa import (
    Activity,
    KpaConfig,
    KpaInputs,
    KpaState,
    autoscale,
    delay_scale_down,
    scale_target,
)
from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.spec import ScalingSpec

UTILIZATION = 0.75  # autoscaler_test.go: targetUtilization


def knative_config(target: float, tbc: float, **overrides: Any) -> KpaConfig:
    """autoscaler_test.go's newTestAutoscalerWithScalingMetric: TotalValue = TV / 0.75."""
    knobs: dict[str, Any] = {
        "target_concurrency": target / UTILIZATION,
        "target_utilization": UTILIZATION,
        "stable_window_s": 60.0,
        "panic_threshold_pct": 200.0,
        "max_scale_up_rate": 10.0,
        "max_scale_down_rate": 10.0,
        "max_instances": 1_000_000,  # Scale() knows no bounds
        "target_burst_capacity": tbc,
    }
    if overrides.pop("metric", "concurrency") == "rps":
        knobs.update(metric="rps", target_rps=target / UTILIZATION)
    base = KpaConfig.from_spec(ScalingSpec(), concurrency=1)
    return replace(base, **{**knobs, **overrides})


def expected_ebc(total: float, tbc: float, recorded: float, pods: float) -> int:
    """autoscaler_test.go's expectedEBC, verbatim."""
    return math.floor(total / UTILIZATION * pods - tbc - recorded)


# Scale (autoscaler_test.go) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    at_s: float
    stable: float | None  # None: the metric client reports an error / no data
    panic: float | None
    ready: int
    desired: int | None  # Knative's DesiredPodCount; None where ScaleValid is false
    ebc: int | None = None  # checked within ±1, as upstream's approxEquateInt32
    reachable: bool = True
    knobs: dict[str, Any] = field(default_factory=dict)  # a.Update(spec) before this tick


@dataclass(frozen=True)
class ScaleCase:
    upstream: str
    target: float
    tbc: float
    ticks: tuple[Tick, ...]
    knobs: dict[str, Any] = field(default_factory=dict)
    state: KpaState = field(default_factory=KpaState)


def _panicking_since(t: float, max_pods: int) -> KpaState:
    return KpaState(panic_started_at=t, panic_triggered_at=t, max_panic_desired=max_pods)


DELAY = {"max_scale_down_rate": 10.0, "max_scale_up_rate": 10.0, "panic_threshold_pct": 10000.0,
         "scale_down_delay_s": 300.0}  # TestAutoscalerScaleDownDelay's spec: PanicThreshold 100

SCALE_CASES = [
    ScaleCase("TestAutoscalerScaleDownDelay/simple+gradual", 10, 0, (
        Tick(2, 40, 40, 0, 4),
        Tick(300, 0, 0, 0, 4),  # five minutes at reduced concurrency: not yet
        Tick(302, 0, 0, 0, 0),
        Tick(540, 40, 40, 0, 4),
        Tick(600, 30, 30, 0, 4),  # 4 still dominates
        Tick(660, 0, 0, 0, 4),
        Tick(840, 0, 0, 0, 3),  # 4 scrolls out
        Tick(900, 0, 0, 0, 0),
    ), DELAY),
    ScaleCase("TestAutoscalerScaleDownDelayNotReachable", 10, 0, (
        Tick(2, 40, 40, 0, 4),
        Tick(60, 0, 0, 0, 4),
        Tick(2, 0, 0, 0, 0, reachable=False),  # another revision came up: no delay
    ), DELAY),
    ScaleCase("TestAutoscalerScaleDownDelayZero", 10, 0, (
        Tick(0, 40, 40, 0, 4),
        Tick(0.5, 20, 20, 0, 2),
    ), {**DELAY, "scale_down_delay_s": 0.0}),
    ScaleCase("TestAutoscalerNoDataNoAutoscale", 10, 100, (Tick(0, None, None, 1, None),)),
    ScaleCase("TestAutoscalerMetrics", 10, 100, (Tick(0, 50, 50, 1, 5, expected_ebc(10, 100, 50, 1)),)),
    ScaleCase("TestAutoscalerMetricsWithRPS", 10, 100, (
        Tick(61, 100, 99, 1, 10, expected_ebc(10, 100, 99, 1)),
    ), {"metric": "rps"}),
    ScaleCase("TestAutoscalerStableModeIncreaseWithConcurrencyDefault", 10, 101, (
        Tick(0, 50, 10, 1, 5, expected_ebc(10, 101, 10, 1)),
        Tick(0, 100, 10, 1, 10, expected_ebc(10, 101, 10, 1)),
    )),
    ScaleCase("TestAutoscalerStableModeIncreaseWithRPS", 10, 101, (
        Tick(0, 50, 50, 1, 5, expected_ebc(10, 101, 50, 1)),
        Tick(0, 100, 99, 1, 10, expected_ebc(10, 101, 99, 1)),
    ), {"metric": "rps"}),
    ScaleCase("TestAutoscalerUnpanicAfterSlowIncrease", 1, 98, (
        Tick(0, 11, 25, 10, 25, expected_ebc(1, 98, 25, 10)),
        Tick(30, 30, 41, 40, 41, expected_ebc(1, 98, 41, 40)),  # panic time must not move
        Tick(62, 50, 56, 55, 50, expected_ebc(1, 98, 56, 55)),  # no longer in panic
    )),
    ScaleCase("TestAutoscalerExtendPanicWindow", 1, 98, (
        Tick(0, 11, 25, 10, 25, expected_ebc(1, 98, 25, 10)),
        Tick(30, 30, 80, 40, 80, expected_ebc(1, 98, 80, 40)),
    )),
    ScaleCase("TestAutoscalerStableModeDecrease", 10, 98, (
        Tick(0, 100, 100, 8, 10, expected_ebc(10, 98, 100, 8)),
        Tick(0, 50, 50, 8, 5, expected_ebc(10, 98, 50, 8)),
    )),
    ScaleCase("TestAutoscalerStableModeNoTrafficScaleToZero", 10, 75, (
        Tick(0, 1, 0, 1, 1, expected_ebc(10, 75, 0, 1)),
        Tick(0, 0, 0, 1, 0, expected_ebc(10, 75, 0, 1)),
    )),
    ScaleCase("TestAutoscalerActivationScale", 10, 75, (
        Tick(0, 0, 0, 1, 0, expected_ebc(10, 75, 0, 1)),
        Tick(0, 1, 0, 1, 2, expected_ebc(10, 75, 0, 1)),
    ), {"activation_scale": 2}),
    ScaleCase("TestAutoscalerPanicModeExponentialTrackAndStabilize", 1, 101, (
        Tick(0, 6, 6, 1, 6, expected_ebc(1, 101, 6, 1)),
        Tick(0, 36, 36, 6, 36, expected_ebc(1, 101, 36, 6)),
        Tick(1, 216, 216, 36, 216, expected_ebc(1, 101, 216, 36)),
        Tick(1, 1296, 1296, 216, 1296, expected_ebc(1, 101, 1296, 216)),
        Tick(2, 1296, 1296, 1296, 1296, expected_ebc(1, 101, 1296, 1296)),
    )),
    # TestAutoscalerScale, the table
    ScaleCase("TestAutoscalerScale/AutoscalerNoDataAtZeroNoAutoscale", 10, 100, (
        Tick(0, 0, 0, 1, 0, expected_ebc(10, 100, 0, 1)),)),
    ScaleCase("TestAutoscalerScale/AutoscalerNoDataAtZeroNoAutoscaleWithExplicitEPs", 10, 100, (
        Tick(0, 0, 0, 1, 0, expected_ebc(10, 100, 0, 1)),)),
    ScaleCase("TestAutoscalerScale/AutoscalerStableModeUnlimitedTBC", 181, -1, (
        Tick(0, 21, 26, 1, 1, -1),)),
    ScaleCase("TestAutoscalerScale/Autoscaler0TBC", 10, 0, (Tick(0, 50, 49, 1, 5, 0),)),
    ScaleCase("TestAutoscalerScale/AutoscalerStableModeNoChange", 10, 100, (
        Tick(0, 50, 50, 1, 5, expected_ebc(10, 100, 50, 1)),)),
    ScaleCase("TestAutoscalerScale/AutoscalerPanicStableLargerThanPanic", 1, 100, (
        Tick(0, 50, 30, 5, 50, expected_ebc(1, 100, 30, 5)),), state=_panicking_since(-5, 5)),
    ScaleCase("TestAutoscalerScale/AutoscalerPanicStableLessThanPanic", 1, 100, (
        Tick(0, 20, 30, 5, 30, expected_ebc(1, 100, 30, 5)),), state=_panicking_since(-5, 5)),
    ScaleCase("TestAutoscalerScale/AutoscalerStableModeNoChangeAlreadyScaled", 10, 100, (
        Tick(0, 50, 50, 5, 5, expected_ebc(10, 100, 50, 5)),)),
    ScaleCase("TestAutoscalerScale/AutoscalerStableModeIncreaseWithSmallScaleUpRate", 1, 1982, (
        Tick(0, 3, 3.1, 2, 3, expected_ebc(1, 1982, 3.1, 2)),), {"max_scale_up_rate": 1.1}),
    ScaleCase("TestAutoscalerScale/AutoscalerStableModeDecreaseWithSmallScaleDownRate", 10, 1982, (
        Tick(0, 1, 1, 100, 90, expected_ebc(10, 1982, 1, 100)),), {"max_scale_down_rate": 1.1}),
    ScaleCase("TestAutoscalerScale/AutoscalerStableModeDecreaseNonReachable", 10, 1982, (
        Tick(0, 1, 1, 100, 1, expected_ebc(10, 1982, 1, 100), reachable=False),),
        {"max_scale_down_rate": 1.1}),
    ScaleCase("TestAutoscalerScale/AutoscalerPanicModeDoublePodCount", 10, 84, (
        Tick(0, 50, 100, 1, 10, expected_ebc(10, 84, 100, 1)),)),
    ScaleCase("TestAutoscalerPanicThenUnPanicScaleDown", 10, 93, (
        Tick(0, 100, 100, 1, 10, expected_ebc(10, 93, 100, 1)),
        Tick(0, 100, 1000, 10, 100, expected_ebc(10, 93, 1000, 10)),
        Tick(30, 1, 1, 10, 100, expected_ebc(10, 93, 1, 10)),  # still in panic
        Tick(61, 1, 1, 10, 1, expected_ebc(10, 93, 1, 10)),  # after the stable window
    )),
    ScaleCase("TestAutoscalerRateLimitScaleUp", 10, 61, (
        Tick(0, 1000, 1001, 1, 10, expected_ebc(10, 61, 1001, 1)),  # needs 100, ×10 only
        Tick(0, 1000, 1001, 10, 100, expected_ebc(10, 61, 1001, 10)),
    )),
    ScaleCase("TestAutoscalerRateLimitScaleDown", 10, 61, (
        Tick(0, 1, 1, 100, 10, expected_ebc(10, 61, 1, 100)),  # needs 1, ÷10 only
        Tick(0, 1, 1, 10, 1, expected_ebc(10, 61, 1, 10)),
    )),
    ScaleCase("TestAutoscalerUseOnePodAsMinimumIfEndpointsNotFound", 10, 81, (
        Tick(0, 1000, 888, 0, 10, expected_ebc(10, 81, 888, 0)),  # ceil(10 × max(0, 1))
    )),
    ScaleCase("TestAutoscalerUpdateTarget", 10, 77, (
        Tick(0, 100, 101, 1, 10, expected_ebc(10, 77, 101, 1)),
        Tick(0, 100, 101, 10, 100, expected_ebc(1, 71, 101, 10),
             knobs={"target_concurrency": 1 / UTILIZATION, "target_burst_capacity": 71.0}),
    )),
]


@pytest.mark.parametrize("case", SCALE_CASES, ids=lambda c: c.upstream)
def test_scale(case: ScaleCase) -> None:
    """Knative's Scale(): desired count (or no answer) and excess burst capacity, tick by tick."""
    config = knative_config(case.target, case.tbc, **case.knobs)
    state = case.state
    for tick in case.ticks:
        config = replace(config, **tick.knobs)
        inputs = KpaInputs(tick.stable, tick.panic, tick.ready, tick.reachable)
        desired, ebc, _, state = autoscale(config, inputs, tick.at_s, state)
        assert desired == tick.desired, f"at {tick.at_s} s"
        if tick.ebc is not None and desired is not None:
            assert abs(ebc - tick.ebc) <= 1, f"at {tick.at_s} s: EBC {ebc}, Knative {tick.ebc}"


def test_panic_state_of_a_new_autoscaler() -> None:
    """TestStartInPanicMode + TestNewFail: created over 0 or 1 ready, no panic and maxPanicPods =
    the ready count; over 2, panicking; a failed pod count (torpor: none known) is 0."""
    for ready in (0, 1):
        state = KpaState.new(now=0.0, ready_instances=ready)
        assert (state.panic_triggered_at, state.max_panic_desired) == (None, ready)
    state = KpaState.new(now=0.0, ready_instances=2)
    assert (state.panic_triggered_at is not None, state.max_panic_desired) == (True, 2)
    assert KpaState.new(now=0.0).max_panic_desired == 0


def test_unpanic_after_slow_increase_keeps_the_panic_start() -> None:
    """TestAutoscalerUnpanicAfterSlowIncrease / ExtendPanicWindow: the panic time is the first
    trigger while under the threshold, moved by each tick over it, zero after un-panicking."""
    config = knative_config(1, 98)
    _, _, _, state = autoscale(config, KpaInputs(11, 25, 10), 0.0, KpaState())
    assert state.panic_triggered_at == 0.0
    _, _, _, slow = autoscale(config, KpaInputs(30, 41, 40), 30.0, state)
    assert slow.panic_triggered_at == 0.0
    _, _, _, extended = autoscale(config, KpaInputs(30, 80, 40), 30.0, state)
    assert extended.panic_triggered_at == 30.0
    _, _, _, calm = autoscale(config, KpaInputs(50, 56, 55), 62.0, slow)
    assert calm.panic_triggered_at is None


# scale (scaler_test.go TestScaler) --------------------------------------------------------------

NOW = 10_000.0
WINDOW_S = 300.0  # kpa_test.go: stableWindow = 5 min
PA_WINDOW_S = 45.0  # paStableWindow, set by the window annotation
GRACE_S = 60.0  # gracePeriod


@dataclass(frozen=True)
class ScalerCase:
    label: str
    start: int  # startReplicas
    scale_to: int  # -1: no metrics
    want: int | None  # what scale() returns; None for -1
    replicas: int  # replicas afterwards: wantReplicas when wantScaling, else startReplicas
    activity: Activity = "activating"  # a new PA is Active=Unknown
    for_s: float = 0.0  # how long in that activity (paMarkActive(k, now - for_s) ...)
    window_s: float = WINDOW_S
    retention_s: float = 0.0
    proxy_for_s: float | None = None  # markSKSInProxyFor; None: the SKS is not proxying
    min_instances: int = 0
    max_instances: int = 0  # 0: unbounded
    initial: int = 0
    initialized: bool = False
    reachable: bool = True
    tbc: float = 211.0


SCALER_CASES = [
    ScalerCase("waits to scale to zero (just before idle period)", 1, 0, 1, 1, "active", WINDOW_S - 1),
    ScalerCase("waits to scale to zero (just before idle period), custom PA window", 1, 0, 1, 1,
               "active", PA_WINDOW_S - 1, window_s=PA_WINDOW_S),
    ScalerCase("custom PA window, check for standard window, no probe", 1, 0, 0, 1, "active",
               WINDOW_S, window_s=PA_WINDOW_S),
    ScalerCase("scale to 1 waiting for idle expires", 10, 0, 1, 1, "active", WINDOW_S - 1),
    ScalerCase("waits to scale to zero after idle period", 1, 0, 0, 1, "active", WINDOW_S),
    ScalerCase("waits to scale to zero after idle period; sks in proxy mode", 1, 0, 0, 1, "active",
               WINDOW_S, proxy_for_s=0.0),
    ScalerCase("waits to scale to zero after idle period (custom PA window)", 1, 0, 0, 1, "active",
               PA_WINDOW_S, window_s=PA_WINDOW_S),
    ScalerCase("can scale to zero after grace period, but 0 PA retention", 1, 0, 0, 0, "inactive",
               GRACE_S, retention_s=0.0),
    ScalerCase("can't scale to zero after grace period, but before last pod retention", 1, 0, 0, 1,
               "inactive", GRACE_S, retention_s=2 * GRACE_S),
    ScalerCase("can't scale to zero after grace period, but before last pod retention, pa defined",
               1, 0, 0, 1, "inactive", GRACE_S, retention_s=2 * GRACE_S),
    ScalerCase("scale to zero after grace period, and after last pod retention", 1, 0, 0, 0,
               "inactive", GRACE_S, retention_s=GRACE_S),
    ScalerCase("scale to zero after grace period", 1, 0, 0, 0, "inactive", GRACE_S),
    ScalerCase("waits to scale to zero (just before grace period)", 1, 0, 0, 1, "inactive", GRACE_S - 1),
    ScalerCase("waits to scale to zero (just before grace period, sks short)", 1, 0, 0, 1, "inactive",
               GRACE_S - 1, proxy_for_s=GRACE_S - 1),
    ScalerCase("waits to scale to zero (just before grace period, sks in proxy long) and last pod "
               "timeout positive", 1, 0, 0, 0, "inactive", GRACE_S - 1, retention_s=42.0,
               proxy_for_s=GRACE_S),
    ScalerCase("waits to scale to zero (just before grace period, sks in proxy long)", 1, 0, 0, 0,
               "inactive", GRACE_S - 1, proxy_for_s=GRACE_S),
    ScalerCase("scale to zero with TBC=-1", 1, 0, 0, 0, "inactive", GRACE_S, tbc=-1.0),
    ScalerCase("waits to scale to zero while activating until after deadline exceeded", 1, 0, None, 1,
               "activating", (121 + 30) / 2),
    ScalerCase("scale down to minScale before grace period", 10, 0, 2, 2, "inactive", GRACE_S - 1,
               min_instances=2),
    ScalerCase("scale down to minScale after grace period", 10, 0, 2, 2, "inactive", GRACE_S,
               min_instances=2),
    ScalerCase("scale to zero ignore last pod retention if  revision is unreachable", 1, 0, 0, 0,
               "inactive", GRACE_S, retention_s=10 * GRACE_S, reachable=False),
    ScalerCase("can't scale to zero if revision is unreachable, but before deadline", 1, 0, 0, 1,
               "inactive", GRACE_S - 1, retention_s=10 * GRACE_S, reachable=False),
    ScalerCase("ignore minScale if unreachable", 10, 0, 0, 0, "inactive", GRACE_S, min_instances=2,
               reachable=False),
    ScalerCase("observe minScale if reachability unknown", 10, 0, 2, 2, "inactive", GRACE_S,
               min_instances=2),
    ScalerCase("scales up", 1, 10, 10, 10),
    ScalerCase("scales up to maxScale", 1, 10, 8, 8, max_instances=8),
    ScalerCase("scale up inactive revision", 1, 10, 10, 10, "inactive", GRACE_S / 2),
    ScalerCase("does not scale up from zero with no metrics", 0, -1, None, 0, "inactive", 0.0),
    ScalerCase("scales up from zero to desired one", 0, 1, 1, 1),
    ScalerCase("scales up from zero to desired high scale", 0, 10, 10, 10),
    ScalerCase("negative scale does not scale", 12, -1, None, 12, "active", 0.0),
    ScalerCase("initial scale attained, but now time to scale down", 2, 0, 1, 1, "active", 120.0,
               initial=2, initialized=True),
    ScalerCase("haven't scaled to initial scale, override desired scale with initial scale", 0, 1, 2, 2,
               "activating", 0.0, initial=2),
    ScalerCase("initial scale reached for the first time", 5, 1, 5, 5, "activating", 0.0, initial=5),
    ScalerCase("reaching initial scale zero", 0, 0, 0, 0, "inactive", 0.0),
    ScalerCase("unreachable revision with initialScale > 1 can scale to 0", 2, 0, 1, 1, "active", 120.0,
               initial=2, reachable=False),
]


@pytest.mark.parametrize("case", SCALER_CASES, ids=lambda c: c.label)
def test_scaler(case: ScalerCase) -> None:
    """Knative's scaler.scale(): what it returns and the replica count it leaves."""
    config = replace(
        KpaConfig.from_spec(ScalingSpec(), concurrency=1),
        stable_window_s=case.window_s, scale_to_zero_grace_s=GRACE_S,
        scale_to_zero_pod_retention_s=case.retention_s, min_instances=case.min_instances,
        max_instances=case.max_instances or 1000, initial_instances=case.initial,
        target_burst_capacity=case.tbc,
    )
    state = KpaState(
        scale=case.start, activity=case.activity, activity_since=NOW - case.for_s,
        proxy_since=None if case.proxy_for_s is None else NOW - case.proxy_for_s,
        initialized=case.initialized,
    )
    desired = None if case.scale_to < 0 else case.scale_to
    want, apply, _ = scale_target(config, desired, NOW, state, case.reachable)
    assert (want, want if apply and want is not None else case.start) == (case.want, case.replicas)


# panic window (metric_test.go TestMakeMetric) -----------------------------------------------------

PANIC_WINDOWS = [  # (sub-case, stable window s, panic window %, Knative's panic window s)
    ("defaults", 60, 10, 6),
    ("with too short panic window", 10, 10, 1),
    ("with longer stable window, no panic window percentage, defaults to 10%", 600, 10, 60),
    ("with longer panic window percentage", 60, 50, 30),
    ("with panic window percentage+rounding", 60, 51, 31),
]


@pytest.mark.parametrize(("label", "stable_s", "pct", "panic_s"), PANIC_WINDOWS, ids=lambda v: str(v))
def test_panic_window(label: str, stable_s: float, pct: float, panic_s: float) -> None:
    """MakeMetric: stable × pct rounded to the nearest second, at least one bucket (1 s)."""
    config = replace(KpaConfig.from_spec(ScalingSpec(), 1), stable_window_s=stable_s, panic_window_pct=pct)
    assert config.panic_window_s == panic_s


# aggregation ------------------------------------------------------------------------------------

TIME_WINDOW_MAX = [  # TestTimedWindowMax: a 5 s window of (offset s, value), Knative's Current()
    ("single value", ((0.0, 5),), 5),
    ("two values in same second", ((0.0, 6), (0.5, 5)), 6),
    ("two values", ((0.0, 5), (1.0, 8)), 8),
    ("time gap", ((0.0, 5), (6.0, 4)), 4),
]


@pytest.mark.parametrize(("label", "values", "expect"), TIME_WINDOW_MAX, ids=lambda v: str(v))
def test_timed_window_max(label: str, values: tuple[tuple[float, int], ...], expect: int) -> None:
    """The scale-down delay's window is Knative's max.TimeWindow."""
    config = replace(KpaConfig.from_spec(ScalingSpec(), 1), scale_down_delay_s=5.0)
    state, current = KpaState(), 0
    for offset, value in values:
        current, state = delay_scale_down(value, 100.0 + offset, config, state)
    assert current == expect


@dataclass(frozen=True)
class AverageCase:
    label: str
    at_s: float  # seconds after the first record
    knative: float
    torpor: float | None = None  # set where torpor differs on purpose
    why: str = ""


CARRIED = ("torpor's gateway sees every change, so a second without a record carried the last "
           "level (known, not missing); Knative's scraped buckets leave a hole and average only "
           "the seconds with samples (torpor/autoscaling/metrics.py)")
WINDOW_AVERAGE = [  # TestTimedFloat64BucketsWindowAverage: 5 s window, levels 1..5 one a second
    AverageCase("first write only", 0.0, 1.0),  # "we properly use firstWrite. Without that 0.2"
    AverageCase("full window", 4.0, 15 / 5),
    AverageCase("now lags behind", 3.6, 15 / 5),
    AverageCase("short hole", 6.0, (15 - 1 - 2) / (5 - 2), torpor=(3 + 4 + 5 + 5 + 5) / 5, why=CARRIED),
    AverageCase("long hole", 10.0, 0.0, torpor=5.0, why=CARRIED),
]


@pytest.mark.parametrize("case", WINDOW_AVERAGE, ids=lambda c: c.label)
def test_window_average(case: AverageCase) -> None:
    """The recorder's window average against Knative's bucket average."""
    recorder = ConcurrencyRecorder()
    if case.at_s == 0.0:
        recorder.record(100.0, 1)
    else:
        for i in range(5):
            recorder.record(100.0 + i, i + 1)
    expected = case.knative if case.torpor is None else case.torpor
    assert recorder.window_average(100.0 + case.at_s, 5) == pytest.approx(expected)


# the count ---------------------------------------------------------------------------------------

NOT_PORTED = {
    "TestAutoscalerStartMetrics": "checks OpenTelemetry gauges; torpor exports its own /metrics",
    "TestCantCountPods": "torpor counts its own instances; there is no lister error to return",
    "TestScaler/scale to zero after grace period, but fail prober":
        "no activator probe: torpor's gateway queue is in-process and switches in the same tick",
    "TestScaler/scale to zero after grace period, but wrong prober response": "as above",
    "TestScaler/scale to zero while activating after deadline exceeded":
        "deliberate: a cold start is bounded by initialize_timeout_s and retried with backoff by "
        "the reconciler; the KPA has no separate activation deadline",
    "TestScaler/scale to zero while activating after revision deadline exceeded": "as above",
    "TestDisableScaleToZero": "no cluster-wide switch; min_instances: 1 is the per-function way",
    "TestTimedFloat64Buckets* (other than WindowAverage)":
        "Knative's bucket store (decay, resize, 3 s granularity); torpor integrates changes instead",
}


def test_ported_case_count() -> None:
    """The oracle's size and how much of it torpor matches, for the closing note."""
    scale_ticks = sum(len(c.ticks) for c in SCALE_CASES)
    rows = len(SCALE_CASES) + 2 + len(SCALER_CASES) + len(PANIC_WINDOWS) + len(TIME_WINDOW_MAX)
    rows += len(WINDOW_AVERAGE)
    differ = sum(1 for c in WINDOW_AVERAGE if c.torpor is not None)
    assert (len(SCALE_CASES), scale_ticks, len(SCALER_CASES)) == (31, 59, 36)
    assert (rows, differ) == (83, 2)
