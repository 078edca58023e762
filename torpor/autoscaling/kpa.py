"""Knative's KPA as a chain of pure stages: ``decide(config, inputs, now, state)``.

The facts come from Knative Serving: ``pkg/autoscaler/scaling/autoscaler.go`` (raw desired count,
rate limits, panic mode, scale-down delay) and ``pkg/reconciler/autoscaling/kpa/scaler.go`` (initial
scale, min/max bounds, scale to zero). Each stage is a small function, tested alone; ``decide`` only
chains them and explains the result in one sentence. Nothing here reads a clock or does I/O: the
caller passes ``now`` and keeps the returned state for the next tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

from torpor.spec import ScalingSpec

TARGET_MIN = 0.01  # Knative's autoscaling.TargetMin: the smallest per-instance target
_CEIL_SLACK = 1e-9  # 2.1 / 0.7 is 3.0000000000000004 in floats; it must ask for 3, not 4


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

    def __post_init__(self) -> None:
        checks = {
            "target_concurrency": self.target_concurrency > 0,
            "target_utilization": 0 < self.target_utilization <= 1,
            "stable_window_s": self.stable_window_s >= 1,
            "panic_window_pct": 0 < self.panic_window_pct <= 100,
            "panic_threshold_pct": self.panic_threshold_pct > 100,
            "max_scale_up_rate": self.max_scale_up_rate > 1,
            "max_scale_down_rate": self.max_scale_down_rate > 1,
            "scale_down_delay_s": self.scale_down_delay_s >= 0,
            "scale_to_zero_grace_s": self.scale_to_zero_grace_s >= 0,
            "min_instances": 0 <= self.min_instances <= self.max_instances,
            "max_instances": self.max_instances >= 1,
            "initial_instances": self.initial_instances >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid KPA config: {', '.join(bad)} ({self})")

    @classmethod
    def from_spec(cls, scaling: ScalingSpec, concurrency: int) -> KpaConfig:
        """Knobs from the spec; the target defaults to, and never exceeds, the concurrency.

        Knative does the same with containerConcurrency: a target above what an instance can hold
        would under-provision, so the smaller of the two wins.
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
        )

    @property
    def target_per_instance(self) -> float:
        """What one instance should carry: e.g. concurrency 1 × utilisation 0.7 = 0.7."""
        return max(TARGET_MIN, self.target_concurrency * self.target_utilization)

    @property
    def panic_window_s(self) -> float:
        """e.g. 10 % of a 60 s stable window = 6 s."""
        return self.stable_window_s * self.panic_window_pct / 100


class ConcurrencyWindow(Protocol):
    """What ``KpaInputs.observe`` reads; ``metrics.ConcurrencyRecorder`` implements it."""

    def window_average(self, now: float, window_s: float) -> float: ...

    @property
    def last_request_at(self) -> float | None: ...


@dataclass(frozen=True)
class KpaInputs:
    """One snapshot of the metrics window and the instance count."""

    stable_average: float  # average in-system concurrency over the stable window
    panic_average: float  # ... over the panic window
    ready_instances: int
    last_request_at: float | None

    @classmethod
    def observe(
        cls, window: ConcurrencyWindow, config: KpaConfig, now: float, ready_instances: int
    ) -> KpaInputs:
        return cls(
            stable_average=window.window_average(now, config.stable_window_s),
            panic_average=window.window_average(now, config.panic_window_s),
            ready_instances=ready_instances,
            last_request_at=window.last_request_at,
        )


@dataclass(frozen=True)
class KpaState:
    """What the KPA remembers between ticks.

    ``history`` is a descending-maxima window (Knative's ``max.TimeWindow``): each entry's count is
    larger than every later entry's, so its head is the maximum and it stays a few entries long.
    """

    panic_started_at: float | None = None
    panic_triggered_at: float | None = None  # last tick over the threshold; the exit clock
    max_panic_desired: int = 0
    history: tuple[tuple[float, int], ...] = ()  # (time, desired) within scale_down_delay_s
    initialized: bool = False  # initial_instances reached; never applied again

    @classmethod
    def new(cls, now: float, ready_instances: int = 0) -> KpaState:
        """A fresh autoscaler. As in Knative, one taking over more than 1 ready instance (a restart
        that lost the metrics history) starts in panic so it does not scale down before it knows."""
        if ready_instances > 1:
            return cls(now, now, ready_instances)
        return cls()


@dataclass(frozen=True)
class KpaDecision:
    desired: int
    panic: bool
    reason: str


def raw_desired(average: float, config: KpaConfig) -> int:
    """Instances to carry ``average`` at the target: e.g. ceil(2.1 / (1 × 0.7)) = ceil(3.0) = 3.

    Any load at all asks for at least 1, however small (the float slack must not round it away).
    """
    if average <= 0:
        return 0
    return max(1, math.ceil(average / config.target_per_instance - _CEIL_SLACK))


def rate_limited(desired: int, ready: int, config: KpaConfig) -> int:
    """Clamp to [floor(ready / down_rate), ceil(ready × up_rate)]; e.g. 10 ready, rates 2 and
    1000: [5, 10000]. With 0 ready there is no upper clamp (a cold start asks for what it needs);
    the lower bound treats 0 as 1, as Knative does: floor(1 / 2) = 0."""
    lowest = math.floor(max(ready, 1) / config.max_scale_down_rate)
    highest = math.ceil(ready * config.max_scale_up_rate) if ready > 0 else desired
    return min(max(desired, lowest), highest)


def next_panic_state(panic_raw: int, ready: int, now: float, config: KpaConfig, state: KpaState) -> KpaState:
    """Enter or extend panic when panic_raw / max(ready, 1) ≥ threshold (e.g. 4 / 2 ≥ 200 %);
    leave only when under it and more than a stable window has passed since it last triggered."""
    over = panic_raw * 100 >= config.panic_threshold_pct * max(ready, 1)  # exact for integer %
    if over:
        started = state.panic_started_at if state.panic_started_at is not None else now
        return replace(state, panic_started_at=started, panic_triggered_at=now)
    last = state.panic_triggered_at
    if last is not None and now - last > config.stable_window_s:
        return replace(state, panic_started_at=None, panic_triggered_at=None, max_panic_desired=0)
    return state


def hold_in_panic(stable: int, panic: int, state: KpaState) -> tuple[int, KpaState]:
    """In panic take the larger window's count, never below the most asked in this panic."""
    if state.panic_triggered_at is None:
        return stable, state
    held = max(stable, panic, state.max_panic_desired)
    return held, replace(state, max_panic_desired=held)


def delay_scale_down(desired: int, now: float, config: KpaConfig, state: KpaState) -> tuple[int, KpaState]:
    """The most asked for in the last scale_down_delay_s: e.g. 4 at t=2, 0 since, delay 300 s →
    4 until t=302 (300 s later, out of the window), then 0. Scale-up passes at once."""
    if config.scale_down_delay_s <= 0:
        return desired, state
    kept = [(t, n) for t, n in state.history if now - t < config.scale_down_delay_s and n > desired]
    history = (*kept, (now, desired))
    return history[0][1], replace(state, history=history)


def apply_initial_scale(desired: int, ready: int, config: KpaConfig, state: KpaState) -> tuple[int, KpaState]:
    """Keep at least initial_instances until max(min, initial) are ready, then never again."""
    if state.initialized:
        return desired, state
    if ready >= max(config.min_instances, config.initial_instances):
        return desired, replace(state, initialized=True)
    return max(desired, config.initial_instances), state


def apply_bounds(desired: int, config: KpaConfig) -> int:
    return min(max(desired, config.min_instances), config.max_instances)


def gate_scale_to_zero(desired: int, last_request_at: float | None, now: float, config: KpaConfig) -> int:
    """Zero only once no request arrived for scale_to_zero_grace_s; until then keep 1."""
    if desired > 0 or last_request_at is None:
        return desired
    return 1 if now - last_request_at < config.scale_to_zero_grace_s else 0


def decide(config: KpaConfig, inputs: KpaInputs, now: float, state: KpaState) -> tuple[KpaDecision, KpaState]:
    """One KPA tick: the stages in Knative's order, and a sentence saying what moved the count."""
    ready = inputs.ready_instances
    stable_raw = raw_desired(inputs.stable_average, config)
    panic_raw = raw_desired(inputs.panic_average, config)
    stable = rate_limited(stable_raw, ready, config)
    panic = rate_limited(panic_raw, ready, config)
    state = next_panic_state(panic_raw, ready, now, config, state)
    in_panic = state.panic_triggered_at is not None
    if in_panic:
        reason = f"panic, {inputs.panic_average:.1f} in system over {ready} ready"
        raw, limited = max(stable_raw, panic_raw), max(stable, panic)
    else:
        reason = (
            f"stable, {inputs.stable_average:.1f} in system, "
            f"target {config.target_utilization:g}×{config.target_concurrency:g}"
        )
        raw, limited = stable_raw, stable
    notes = [f"rate-limited {raw} to {limited} from {ready} ready"] if limited != raw else []

    desired, state = hold_in_panic(stable, panic, state)
    if desired > limited:
        notes.append(f"panic holds {desired}")
    delayed, state = delay_scale_down(desired, now, config, state)
    if delayed > desired:
        notes.append(f"scale-down delayed, holding {delayed}")
    initial, state = apply_initial_scale(delayed, ready, config, state)
    if initial > delayed:
        until = max(config.min_instances, config.initial_instances)
        notes.append(f"initial scale {initial} until {until} ready")
    bounded = apply_bounds(initial, config)
    if bounded != initial:
        edge = "min_instances" if bounded > initial else "max_instances"
        notes.append(f"{edge} {bounded}")
    final = gate_scale_to_zero(bounded, inputs.last_request_at, now, config)
    if final > bounded and inputs.last_request_at is not None:
        notes.append(
            f"last request {now - inputs.last_request_at:.0f} s ago, keeping 1 "
            f"for the {config.scale_to_zero_grace_s:g} s grace"
        )
    return KpaDecision(final, in_panic, "; ".join([reason, *notes])), state
