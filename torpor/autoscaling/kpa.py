"""Knative's KPA as a chain of pure stages: ``decide(config, inputs, now, state)``.

The facts come from Knative Serving, and the stages run in its order:

1. ``pkg/autoscaler/scaling/autoscaler.go`` (``Scale``): raw desired count from the metric, rate
   limits, activation scale, panic mode, scale-down delay, excess burst capacity. No data yet (a new
   function nobody called, with no instance ready) is not zero: it is *no answer*;
2. ``pkg/reconciler/autoscaling/kpa/scaler.go`` (``scale``): initial scale raised into the min bound
   until reached, min/max bounds, and the scale-to-zero sequence: the last instance stays until the
   function was active for a stable window, the function is then marked inactive, and zero comes
   once it was inactive for ``scale_to_zero_grace_s`` (or the gateway queue was in the path that
   long) and for ``scale_to_zero_pod_retention_s``;
3. ``pkg/reconciler/autoscaling/kpa/kpa.go`` (``computeActiveCondition``, the SKS mode): whether the
   function is activating, active or inactive, and whether the gateway queues requests (Knative's
   activator in the path) or sends them straight to instances.

Each stage is a small function, tested alone; ``decide`` only chains them and explains the result in
one sentence. Nothing here reads a clock or does I/O: the caller passes ``now`` and keeps the
returned state for the next tick. ``tests/test_kpa_knative.py`` replays Knative's own test cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

from torpor.spec import ScalingSpec

TARGET_MIN = 0.01  # Knative's autoscaling.TargetMin: the smallest per-instance target
WINDOW_MIN_S = 6.0  # Knative's autoscaling.WindowMin: the shortest stable window
WINDOW_MAX_S = 3600.0  # Knative's autoscaling.WindowMax
# Deliberate difference from Knative's plain math.Ceil: 2.1 / 0.7 is 3.0000000000000004 in floats,
# which Knative rounds to 4 instances; torpor asks for the 3 the arithmetic calls for. Only a
# quotient within 1e-9 above a whole number is affected.
_CEIL_SLACK = 1e-9

Metric = Literal["concurrency", "rps"]
Activity = Literal["activating", "active", "inactive"]


@dataclass(frozen=True)
class KpaConfig:
    """The KPA knobs of one function; ``from_spec`` is the usual way to build one."""

    target_concurrency: float  # requests in the system per instance at 100 % utilisation
    target_utilization: float
    stable_window_s: float
    panic_window_pct: float
    panic_threshold_pct: float
    max_scale_up_rate: float
    max_scale_down_rate: float
    scale_down_delay_s: float
    scale_to_zero_grace_s: float
    min_instances: int
    max_instances: int
    initial_instances: int
    activation_scale: int = 1
    metric: Metric = "concurrency"
    target_rps: float = 200.0  # requests per second per instance at 100 % (metric rps)
    target_burst_capacity: float = 211.0  # -1: the gateway queue is always in the path
    scale_to_zero_pod_retention_s: float = 0.0
    # derived from the knobs above and read on every tick, so worked out once, in __post_init__
    _target_total: float = field(init=False, repr=False, compare=False)
    _target_per_instance: float = field(init=False, repr=False, compare=False)
    _panic_window_s: float = field(init=False, repr=False, compare=False)
    _stable_note: str = field(init=False, repr=False, compare=False)  # e.g. " in system, target 0.7×1"

    def __post_init__(self) -> None:
        tbc = self.target_burst_capacity
        checks = {
            "target_concurrency": self.target_concurrency > 0,
            "target_utilization": 0 < self.target_utilization <= 1,
            "stable_window_s": WINDOW_MIN_S <= self.stable_window_s <= WINDOW_MAX_S,
            "panic_window_pct": 0 < self.panic_window_pct <= 100,
            "panic_threshold_pct": self.panic_threshold_pct > 100,
            "max_scale_up_rate": self.max_scale_up_rate > 1,
            "max_scale_down_rate": self.max_scale_down_rate > 1,
            "scale_down_delay_s": self.scale_down_delay_s >= 0,
            "scale_to_zero_grace_s": self.scale_to_zero_grace_s >= 0,
            "min_instances": 0 <= self.min_instances <= self.max_instances,
            "max_instances": self.max_instances >= 1,
            "initial_instances": self.initial_instances >= 0,
            "activation_scale": self.activation_scale >= 1,
            "metric": self.metric in ("concurrency", "rps"),
            "target_rps": self.target_rps > 0,
            "target_burst_capacity": tbc >= 0 or tbc == -1,
            "scale_to_zero_pod_retention_s": self.scale_to_zero_pod_retention_s >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid KPA config: {', '.join(bad)} ({self})")
        total = self.target_rps if self.metric == "rps" else self.target_concurrency
        object.__setattr__(self, "_target_total", total)
        object.__setattr__(self, "_target_per_instance", max(TARGET_MIN, total * self.target_utilization))
        unit = " req/s" if self.metric == "rps" else " in system"
        object.__setattr__(self, "_stable_note", f"{unit}, target {self.target_utilization:g}×{total:g}")
        object.__setattr__(self, "_panic_window_s", max(
            1.0, math.floor(self.stable_window_s * self.panic_window_pct / 100 + 0.5)))

    @classmethod
    def from_spec(cls, scaling: ScalingSpec, concurrency: int) -> KpaConfig:
        """Knobs from the spec; the target defaults to, and never exceeds, the concurrency.

        Knative does the same with containerConcurrency: a target above what an instance can hold
        would under-provision, so the smaller of the two wins. An RPS target is not capped.
        """
        target = float(concurrency)
        if scaling.target_concurrency is not None:
            target = min(scaling.target_concurrency, target)
        return cls(
            target_concurrency=target,
            target_utilization=scaling.target_utilization,
            stable_window_s=scaling.stable_window_s,
            panic_window_pct=scaling.panic_window_pct,
            panic_threshold_pct=scaling.panic_threshold_pct,
            max_scale_up_rate=scaling.max_scale_up_rate,
            max_scale_down_rate=scaling.max_scale_down_rate,
            scale_down_delay_s=scaling.scale_down_delay_s,
            scale_to_zero_grace_s=scaling.scale_to_zero_grace_s,
            min_instances=scaling.min_instances,
            max_instances=scaling.max_instances,
            initial_instances=scaling.initial_instances,
            activation_scale=scaling.activation_scale,
            # gpu_utilization adds a GPU rule beside the KPA (autoscaler.py); the KPA itself
            # still averages requests in the system
            metric="rps" if scaling.metric == "rps" else "concurrency",
            target_rps=scaling.target_rps if scaling.target_rps is not None else 200.0,
            target_burst_capacity=scaling.target_burst_capacity,
            scale_to_zero_pod_retention_s=scaling.scale_to_zero_pod_retention_s,
        )

    @property
    def target_total(self) -> float:
        """What one instance can carry at 100 %: its concurrency target, or its RPS target."""
        return self._target_total

    @property
    def target_per_instance(self) -> float:
        """What one instance should carry: e.g. concurrency 1 × utilisation 0.7 = 0.7."""
        return self._target_per_instance

    @property
    def panic_window_s(self) -> float:
        """Knative's rounding: 10 % of 60 s = 6 s; 10 % of 45 s = 4.5 → 5 s (half away from
        zero, as Go's Duration.Round); never under one 1 s bucket (1 % of 6 s = 0.06 → 1 s)."""
        return self._panic_window_s


class ConcurrencyWindow(Protocol):
    """What ``KpaInputs.observe`` reads; ``metrics.ConcurrencyRecorder`` implements it."""

    def window_average(self, now: float, window_s: float) -> float: ...

    def rate(self, now: float, window_s: float) -> float: ...

    @property
    def has_data(self) -> bool: ...


@dataclass(frozen=True)
class KpaInputs:
    """One snapshot of the metrics window and the instance count.

    The averages are None while there is no data (Knative's ErrNoData): nothing was ever recorded
    and no instance is ready to be observed idle. ``reachable`` is False for a revision no traffic
    is routed to (Knative's routingState "reserve").
    """

    stable_average: float | None  # in-system concurrency (or arrivals per second) over the stable window
    panic_average: float | None  # ... over the panic window
    ready_instances: int
    reachable: bool = True

    @classmethod
    def observe(
        cls, window: ConcurrencyWindow, config: KpaConfig, now: float, ready_instances: int,
        reachable: bool = True,
    ) -> KpaInputs:
        if not window.has_data and ready_instances == 0:
            return cls(None, None, ready_instances, reachable)
        read = window.rate if config.metric == "rps" else window.window_average
        return cls(
            stable_average=read(now, config.stable_window_s),
            panic_average=read(now, config.panic_window_s),
            ready_instances=ready_instances,
            reachable=reachable,
        )


@dataclass(frozen=True)
class KpaState:
    """What the KPA remembers between ticks.

    ``history`` is a descending-maxima window (Knative's ``max.TimeWindow``): each entry's count is
    larger than every later entry's, so its head is the maximum and it stays a few entries long.
    ``scale`` is the count last applied (Knative: the deployment's replicas), kept when a tick has
    no answer. ``activity`` is Knative's PA Active condition, ``proxy_since`` when the gateway queue
    last came into the path (None while requests go straight to instances); a new function has been
    activating, with the queue in the path, since before anything happened (-inf).
    """

    panic_started_at: float | None = None
    panic_triggered_at: float | None = None  # last tick over the threshold; the exit clock
    max_panic_desired: int = 0
    history: tuple[tuple[float, int], ...] = ()  # (time, desired) within scale_down_delay_s
    initialized: bool = False  # initial_instances were ready once; never applied again
    scale: int = 0
    activity: Activity = "activating"
    activity_since: float = -math.inf
    proxy_since: float | None = -math.inf

    @classmethod
    def new(cls, now: float, ready_instances: int = 0) -> KpaState:
        """A fresh autoscaler. As in Knative, one taking over more than 1 ready instance (a restart
        that lost the metrics history) starts in panic so it does not scale down before it knows."""
        if ready_instances > 1:
            return cls(now, now, ready_instances, scale=ready_instances)
        return cls(max_panic_desired=ready_instances, scale=ready_instances)


@dataclass(frozen=True)
class KpaDecision:
    desired: int
    panic: bool
    reason: str
    excess_burst_capacity: int  # < 0: not enough spare capacity for target_burst_capacity
    activator_in_path: bool  # the gateway queues requests until an instance has a free slot

    def __init__(self, desired: int, panic: bool, reason: str, excess_burst_capacity: int,
                 activator_in_path: bool) -> None:
        # written out: compiled by mypyc (make sim-compiled) these are native stores, where the
        # __init__ @dataclass generates stays interpreted; the same fields, defaults and order
        object.__setattr__(self, "desired", desired)
        object.__setattr__(self, "panic", panic)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "excess_burst_capacity", excess_burst_capacity)
        object.__setattr__(self, "activator_in_path", activator_in_path)


_KPA_STATE_FIELDS = tuple(f.name for f in fields(KpaState))


def _evolve(state: KpaState, **changes: Any) -> KpaState:
    """``dataclasses.replace(state, **changes)`` without its per-call field checks (KpaState has
    no ``__post_init__`` to run): the same new state, several times faster, and a tick that moves
    makes one or two."""
    try:
        known = state.__dict__
    except AttributeError:  # compiled by mypyc (make sim-compiled): a native instance has no
        get = changes.get  # __dict__, and its constructor is the fast way (its fields, in order)
        return KpaState(*[get(name, getattr(state, name)) for name in _KPA_STATE_FIELDS])
    new = object.__new__(KpaState)
    new.__dict__.update(known, **changes)
    return new


# 1. Scale (autoscaler.go) ---------------------------------------------------------------------


def raw_desired(average: float, config: KpaConfig) -> int:
    """Instances to carry ``average`` at the target: e.g. ceil(2.1 / (1 × 0.7)) = ceil(3.0) = 3.

    Any load at all asks for at least 1, however small (the float slack must not round it away).
    """
    if average <= 0:
        return 0
    return max(1, math.ceil(average / config.target_per_instance - _CEIL_SLACK))


def rate_limited(desired: int, ready: int, config: KpaConfig, reachable: bool = True) -> int:
    """Clamp to [floor(r / down_rate), ceil(r × up_rate)] with r = max(ready, 1); e.g. 10 ready,
    rates 2 and 1000: [5, 10000]. With 0 ready Knative counts 1: a cold start may ask for
    ceil(1000 × 1) = 1000 at most, floor(1 / 2) = 0 at least. An unreachable function has no
    lower clamp (nothing routes to it, so there is nothing to step down gently for)."""
    base = max(ready, 1)
    lowest = math.floor(base / config.max_scale_down_rate) if reachable else 0
    highest = math.ceil(config.max_scale_up_rate * base)
    return min(max(desired, lowest), highest)


def apply_activation_scale(limited: int, raw: int, config: KpaConfig) -> int:
    """Any load at all asks for at least activation_scale instances (e.g. 1 request, scale 2 →
    2); no load asks for none. Applied after the rate limits, as in Knative."""
    if config.activation_scale > 1 and raw > 0:
        return max(limited, config.activation_scale)
    return limited


def next_panic_state(panic_raw: int, ready: int, now: float, config: KpaConfig, state: KpaState) -> KpaState:
    """Enter or extend panic when panic_raw / max(ready, 1) ≥ threshold (e.g. 4 / 2 ≥ 200 %);
    leave only when under it and more than a stable window has passed since it last triggered."""
    over = panic_raw * 100 >= config.panic_threshold_pct * max(ready, 1)  # exact for integer %
    if over:
        started = state.panic_started_at if state.panic_started_at is not None else now
        return _evolve(state, panic_started_at=started, panic_triggered_at=now)
    last = state.panic_triggered_at
    if last is not None and now - last > config.stable_window_s:
        return _evolve(state, panic_started_at=None, panic_triggered_at=None, max_panic_desired=0)
    return state


def hold_in_panic(stable: int, panic: int, state: KpaState) -> tuple[int, KpaState]:
    """In panic take the larger window's count, never below the most asked in this panic."""
    if state.panic_triggered_at is None:
        return stable, state
    held = max(stable, panic, state.max_panic_desired)
    return held, state if held == state.max_panic_desired else _evolve(state, max_panic_desired=held)


def delay_scale_down(desired: int, now: float, config: KpaConfig, state: KpaState) -> tuple[int, KpaState]:
    """The most asked for in the last scale_down_delay_s: e.g. 4 at t=2, 0 since, delay 300 s →
    4 until t=302 (300 s later, out of the window), then 0. Scale-up passes at once."""
    if config.scale_down_delay_s <= 0:
        return desired, state
    kept = [(t, n) for t, n in state.history if now - t < config.scale_down_delay_s and n > desired]
    history = (*kept, (now, desired))
    return history[0][1], _evolve(state, history=history)


def excess_burst_capacity(panic_average: float, ready: int, config: KpaConfig) -> int:
    """Spare capacity beyond the burst to absorb: floor(ready × total − TBC − panic average), e.g.
    2 instances of concurrency 10, TBC 5, 12 in system: floor(20 − 5 − 12) = 3. TBC 0 is always 0
    (never short), TBC −1 always −1 (always short: the queue stays in the path)."""
    tbc = config.target_burst_capacity
    if tbc == 0:
        return 0
    if tbc < 0:
        return -1
    return math.floor(ready * config.target_total - tbc - panic_average)


# 2. scale (scaler.go) -------------------------------------------------------------------------


def scale_bounds(config: KpaConfig, reachable: bool, initialized: bool) -> tuple[int, int]:
    """(min, max) for this tick: min_instances (0 when unreachable), raised to initial_instances
    until they were ready once. Knative raises only for initial scale > 1 because its deployment is
    created with 1 replica; torpor creates none, so initial_instances 1 is raised too."""
    low = config.min_instances if reachable else 0
    if reachable and not initialized and config.initial_instances > 0:
        low = min(max(low, config.initial_instances), config.max_instances)
    return low, config.max_instances


def apply_bounds(desired: int | None, low: int, high: int) -> int:
    """Clamp into [low, high]; no answer (None) is below any bound, so it becomes ``low``."""
    if desired is None:
        return low
    return min(max(desired, low), high)


def gate_scale_to_zero(
    bounded: int, now: float, config: KpaConfig, state: KpaState, reachable: bool = True
) -> tuple[int | None, bool]:
    """Knative's handleScaleToZero: (wanted count, apply it?). A kept tick leaves the scale alone.

    - activating (instances asked for, not ready): keep; None, the answer is unknown;
    - active: 1 until active for a stable window, then 0 unapplied: the function goes inactive;
    - inactive: 0 once inactive for max(grace, retention); or, past the retention, once the
      gateway queue has been in the path for the grace (as the activator in Knative).
    """
    if bounded != 0:
        return bounded, True
    if state.activity == "activating":
        return None, False
    since = now - state.activity_since
    if state.activity == "active":
        if since >= config.stable_window_s:
            return 0, False
        return 1, True
    retention_s = config.scale_to_zero_pod_retention_s if reachable else 0.0
    if since >= max(config.scale_to_zero_grace_s, retention_s):
        return 0, True
    if retention_s > 0 and since < retention_s:
        return 0, False
    proxied_s = now - state.proxy_since if state.proxy_since is not None else 0.0
    return 0, proxied_s >= config.scale_to_zero_grace_s


# 3. status (kpa.go) ---------------------------------------------------------------------------


def next_activity(
    want: int | None, ready: int, now: float, config: KpaConfig, state: KpaState, reachable: bool = True
) -> KpaState:
    """Knative's computeActiveCondition. Active once max(min, initial) are ready (max(min, 1) after
    initial scale was reached once), activating while fewer are and some are wanted, inactive when
    none are wanted. ``initialized`` is set here, after the bounds used it: initial scale is held
    one tick after it is reached."""
    low = config.min_instances if reachable else 0
    min_ready = max(low, 1) if state.initialized else max(low, config.initial_instances)
    initialized = state.initialized or ready >= min_ready
    wanted = -1 if want is None else want
    activity = state.activity
    if wanted == 0 or min_ready == 0:
        activity = "inactive"
    elif ready < min_ready:
        activity = "activating" if wanted > 0 or activity != "inactive" else "inactive"
    elif wanted > 0 or activity != "inactive":
        activity = "active"
    if activity == state.activity and initialized == state.initialized:
        return state  # the usual tick: nothing moved (and no copy made)
    since = state.activity_since if activity == state.activity else now
    return _evolve(state, initialized=initialized, activity=activity, activity_since=since)


def next_proxy(want: int | None, ebc: int, now: float, state: KpaState) -> KpaState:
    """The gateway queue leaves the path only while instances are wanted and the spare capacity
    covers the burst (excess burst capacity ≥ 0); ``proxy_since`` keeps when it last came in."""
    if want is not None and want > 0 and ebc >= 0:
        return state if state.proxy_since is None else _evolve(state, proxy_since=None)
    if state.proxy_since is None:
        return _evolve(state, proxy_since=now)
    return state


# the chain ------------------------------------------------------------------------------------


def autoscale(
    config: KpaConfig, inputs: KpaInputs, now: float, state: KpaState
) -> tuple[int | None, int, list[str], KpaState]:
    """Stage 1, Knative's ``Scale``: (desired or None without data, excess burst capacity,
    sentences saying why, state)."""
    stable_avg, panic_avg = inputs.stable_average, inputs.panic_average
    if stable_avg is None or panic_avg is None:
        return None, -1, ["no data yet"], state
    ready, reachable = inputs.ready_instances, inputs.reachable
    stable_raw = raw_desired(stable_avg, config)
    panic_raw = raw_desired(panic_avg, config)
    stable_rl = rate_limited(stable_raw, ready, config, reachable)
    panic_rl = rate_limited(panic_raw, ready, config, reachable)
    stable = apply_activation_scale(stable_rl, stable_raw, config)
    panic = apply_activation_scale(panic_rl, panic_raw, config)
    state = next_panic_state(panic_raw, ready, now, config, state)
    if state.panic_triggered_at is not None:
        unit = " req/s" if config.metric == "rps" else " in system"
        notes = [f"panic, {panic_avg:.1f}{unit} over {ready} ready"]
        raw, rl, limited = max(stable_raw, panic_raw), max(stable_rl, panic_rl), max(stable, panic)
    else:
        notes = [f"stable, {stable_avg:.1f}{config._stable_note}"]
        raw, rl, limited = stable_raw, stable_rl, stable
    if rl != raw:
        notes.append(f"rate-limited {raw} to {rl} from {ready} ready")
    if limited != rl:
        notes.append(f"activation scale {limited}")
    desired, state = hold_in_panic(stable, panic, state)
    if desired > limited:
        notes.append(f"panic holds {desired}")
    if reachable:
        delayed, state = delay_scale_down(desired, now, config, state)
        if delayed > desired:
            notes.append(f"scale-down delayed, holding {delayed}")
        desired = delayed
    return desired, excess_burst_capacity(panic_avg, ready, config), notes, state


def scale_target(
    config: KpaConfig, desired: int | None, now: float, state: KpaState, reachable: bool = True
) -> tuple[int | None, bool, int | None]:
    """Stage 2, Knative's ``scale``: (wanted count or None, apply it?, the bounded count it gated
    or None where no bounds were applied). No answer leaves the scale alone unless instances are
    activating; then the bounds and the scale-to-zero gate."""
    if desired is None and state.activity != "activating":
        return None, False, None
    low, high = scale_bounds(config, reachable, state.initialized)
    bounded = apply_bounds(desired, low, high)
    return *gate_scale_to_zero(bounded, now, config, state, reachable), bounded


def _kept(want: int | None, scale: int, now: float, config: KpaConfig, state: KpaState) -> str:
    """Why a tick left the scale at ``scale``."""
    if want is None:
        return f"{'activating, ' if state.activity == 'activating' else ''}keeping {scale}"
    if state.activity == "active":
        return f"idle for the {config.stable_window_s:g} s stable window, deactivating; keeping {scale}"
    waited = now - state.activity_since
    retention = config.scale_to_zero_pod_retention_s
    if retention > 0 and waited < retention:
        return f"inactive {waited:.0f} s, keeping {scale} for the {retention:g} s retention"
    return f"inactive {waited:.0f} s, keeping {scale} for the {config.scale_to_zero_grace_s:g} s grace"


def decide(config: KpaConfig, inputs: KpaInputs, now: float, state: KpaState) -> tuple[KpaDecision, KpaState]:
    """One KPA tick: the stages in Knative's order, and a sentence saying what moved the count."""
    ready, reachable = inputs.ready_instances, inputs.reachable
    desired, ebc, notes, state = autoscale(config, inputs, now, state)
    in_panic = state.panic_triggered_at is not None
    want, apply, bounded = scale_target(config, desired, now, state, reachable)
    if bounded is not None:  # the bounds were applied: say so
        if desired is not None and bounded < desired:
            notes.append(f"max_instances {bounded}")
        elif bounded > (desired or 0):
            edge = "initial scale" if bounded > config.min_instances else "min_instances"
            notes.append(f"{edge} {bounded}")
        if apply and want == 1 and bounded == 0:
            notes.append(f"active {now - state.activity_since:.0f} s, keeping 1 for the "
                         f"{config.stable_window_s:g} s stable window")
    final = want if apply and want is not None else state.scale
    if not apply:
        notes.append(_kept(want, final, now, config, state))
    state = next_activity(want, ready, now, config, state, reachable)
    state = next_proxy(want, ebc, now, state)
    if state.scale != final:
        state = _evolve(state, scale=final)
    decision = KpaDecision(final, in_panic, "; ".join(notes), ebc, state.proxy_since is not None)
    return decision, state
