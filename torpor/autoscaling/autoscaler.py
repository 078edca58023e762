"""One function's scaling decision: the KPA's desired count and the provisioned target together.

total = clamp(max(provisioned target, KPA desired, GPU desired), ·, max_instances) (seed 000:
provisioned instances are kept whatever the traffic; on-demand ones come and go with the KPA; with
``scaling.metric: gpu_utilization`` busy GPUs add instances, seed 004). Pure: the caller passes the
metrics window, the GPU load, ``now`` and the state, and keeps the returned state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from torpor.autoscaling import keepalive, kpa
from torpor.autoscaling.keepalive import InSystem, KeepAliveConfig
from torpor.autoscaling.kpa import ConcurrencyWindow, KpaConfig, KpaInputs, KpaState
from torpor.autoscaling.scaling_policies import (
    PolicyInputs,
    PolicyState,
    ProvisionConfig,
    ProvisionDecision,
    provisioned_target,
)


class MetricsWindow(ConcurrencyWindow, InSystem, Protocol):
    """Everything the policies read; ``metrics.ConcurrencyRecorder`` implements it."""


@dataclass(frozen=True)
class ScaleDecision:
    desired: int  # instances in all
    provisioned: int  # how many of them are provisioned (kept when idle)
    panic: bool
    reason: str
    activator_in_path: bool = True  # the gateway queues requests while no instance has a free slot
    # the keep-alive policy: drain only instances idle this long (None: any idle one, the KPA's)
    keep_idle_s: float | None = None
    # ... and, per instance in routing order, its warm keep-alive (keepalive.KeepAliveDecision)
    keep_warm_s: tuple[float, ...] = ()

    def __init__(self, desired: int, provisioned: int, panic: bool, reason: str,
                 activator_in_path: bool = True, keep_idle_s: float | None = None,
                 keep_warm_s: tuple[float, ...] = ()) -> None:
        # written out: compiled by mypyc (make sim-compiled) these are native stores, where the
        # __init__ @dataclass generates stays interpreted; the same fields, defaults and order
        object.__setattr__(self, "desired", desired)
        object.__setattr__(self, "provisioned", provisioned)
        object.__setattr__(self, "panic", panic)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "activator_in_path", activator_in_path)
        object.__setattr__(self, "keep_idle_s", keep_idle_s)
        object.__setattr__(self, "keep_warm_s", keep_warm_s)


@dataclass(frozen=True)
class GpuSignal:
    """The function's GPUs now (mean SM utilisation over its devices) and the target to hold."""

    utilization_pct: float
    target_pct: float | None  # None: not scaling on it (provision policies may still track it)
    memory_fraction: float = 0.0


def gpu_desired(ready: int, utilization_pct: float, target_pct: float) -> tuple[int, str]:
    """Instances that bring the GPUs to the target, as Kubernetes' HPA sizes on a utilisation:
    ``ceil(ready × utilisation / target)``, e.g. 2 instances at 80 % for 50 % → ceil(3.2) = 4."""
    exact = ready * utilization_pct / target_pct
    wanted = math.ceil(exact - 1e-9 * max(1.0, exact))  # 3 × 50 / 50 must be 3, not 4
    return wanted, (f"GPU utilisation {utilization_pct:g}% on {ready} instances, target "
                    f"{target_pct:g}% → {wanted}")


@dataclass(frozen=True)
class AutoscalerState:
    kpa: KpaState = field(default_factory=KpaState)
    policy: PolicyState = field(default_factory=PolicyState)
    # the last keep-alive decision and what it was made of (the policy's decision, the provisioned
    # target, max_instances): the same objects again give the same decision
    keep_alive: tuple[keepalive.KeepAliveDecision, ProvisionDecision, int, ScaleDecision] | None = field(
        default=None, repr=False, compare=False)


def decide(
    config: KpaConfig,
    provision: ProvisionConfig,
    window: MetricsWindow,
    *,
    concurrency: int,
    ready: int,
    current_provisioned: int,
    now: float,
    state: AutoscalerState,
    reachable: bool = True,
    keep_alive: KeepAliveConfig | None = None,
    cold_start_s: float | None = None,
    gpu: GpuSignal | None = None,
) -> tuple[ScaleDecision, AutoscalerState]:
    """``keep_alive`` set: the keep-alive policy decides the on-demand count instead of the KPA
    (whose state is left as it was); with ``auto`` only while cold starts are fast
    (``keepalive.resolve``). ``gpu`` with a target: busy GPUs may raise it (HPA's rule)."""
    chosen: keepalive.KeepAliveDecision | None = None
    if keep_alive is not None and (
            not keep_alive.auto or keepalive.cold_starts_fast(cold_start_s)):
        chosen = keepalive.decide(keep_alive, window, cold_start_s)
        kpa_state = state.kpa
    else:
        inputs = KpaInputs.observe(window, config, now, ready, reachable)
        kpa_decision, kpa_state = kpa.decide(config, inputs, now, state.kpa)
    # the policy's inputs are measured only for a target-tracking policy (nothing else reads them)
    policy_inputs = PolicyInputs(
        in_system=window.window_average(now, config.stable_window_s),
        current_provisioned=current_provisioned,
        concurrency=concurrency,
        gpu_utilization=gpu.utilization_pct / 100 if gpu is not None else None,
        gpu_memory_utilization=gpu.memory_fraction if gpu is not None else None,
    ) if provision.target_tracking else None
    target, policy_state = provisioned_target(provision, policy_inputs, now, state.policy)
    if chosen is not None and (gpu is None or gpu.target_pct is None or ready == 0):
        last = state.keep_alive
        if not (last is not None and last[0] is chosen and last[1] is target
                and last[2] == config.max_instances):
            last = (chosen, target, config.max_instances,
                    _keep_alive_decision(chosen, target, config.max_instances))
        elif policy_state is state.policy:  # the usual pass: nothing moved, the same state
            return last[3], state
        return last[3], AutoscalerState(kpa_state, policy_state, last)
    keep_idle_s: float | None = None
    keep_warm_s: tuple[float, ...] = ()
    if chosen is not None:  # the keep-alive policy's count, and a GPU signal to weigh it against
        kpa_decision = kpa.KpaDecision(chosen.desired, False, chosen.reason, -1, True)
        keep_idle_s, keep_warm_s = chosen.keep_alive_s, chosen.keep_warm_s
    provisioned = min(target.target, config.max_instances)
    on_demand, reason = kpa_decision.desired, kpa_decision.reason
    if gpu is not None and gpu.target_pct is not None and ready > 0:
        by_gpu, gpu_reason = gpu_desired(ready, gpu.utilization_pct, gpu.target_pct)
        if by_gpu > on_demand:
            on_demand, reason = by_gpu, f"{gpu_reason}; KPA: {kpa_decision.reason}"
    if not (kpa_state is state.kpa and policy_state is state.policy and state.keep_alive is None):
        state = AutoscalerState(kpa_state, policy_state)  # (else nothing moved: the same state)
    return _combine(provisioned, target, on_demand, reason, kpa_decision, config.max_instances,
                    keep_idle_s, keep_warm_s), state


def _combine(provisioned: int, target: ProvisionDecision, on_demand: int, reason: str,
             kpa_decision: kpa.KpaDecision, max_instances: int, keep_idle_s: float | None,
             keep_warm_s: tuple[float, ...]) -> ScaleDecision:
    """The provisioned target and the on-demand count together."""
    desired = min(max(provisioned, on_demand), max_instances)
    if provisioned > on_demand:
        reason = f"provisioned {provisioned} ({target.reason}); KPA: {kpa_decision.reason}"
    return ScaleDecision(desired, provisioned, kpa_decision.panic, reason,
                         kpa_decision.activator_in_path, keep_idle_s, keep_warm_s)


def _keep_alive_decision(chosen: keepalive.KeepAliveDecision, target: ProvisionDecision,
                         max_instances: int) -> ScaleDecision:
    """The keep-alive policy's decision with the provisioned target (no GPU signal)."""
    kpa_decision = kpa.KpaDecision(chosen.desired, False, chosen.reason, -1, True)
    return _combine(min(target.target, max_instances), target, chosen.desired, chosen.reason,
                    kpa_decision, max_instances, chosen.keep_alive_s, chosen.keep_warm_s)
