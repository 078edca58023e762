"""One function's scaling decision: the KPA's desired count and the provisioned target together.

total = clamp(max(provisioned target, KPA desired), ·, max_instances) (seed 000: provisioned instances
are kept whatever the traffic; on-demand ones come and go with the KPA). Pure: the caller passes the
metrics window, ``now`` and the state, and keeps the returned state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torpor.autoscaling import keepalive, kpa
from torpor.autoscaling.keepalive import KeepAliveConfig, PeakWindow
from torpor.autoscaling.kpa import ConcurrencyWindow, KpaConfig, KpaInputs, KpaState
from torpor.autoscaling.scaling_policies import (
    PolicyInputs,
    PolicyState,
    ProvisionConfig,
    provisioned_target,
)


class MetricsWindow(ConcurrencyWindow, PeakWindow, Protocol):
    """Everything the policies read; ``metrics.ConcurrencyRecorder`` implements it."""


@dataclass(frozen=True)
class ScaleDecision:
    desired: int  # instances in all
    provisioned: int  # how many of them are provisioned (kept when idle)
    panic: bool
    reason: str
    activator_in_path: bool = True  # the gateway queues requests while no instance has a free slot


@dataclass(frozen=True)
class AutoscalerState:
    kpa: KpaState = field(default_factory=KpaState)
    policy: PolicyState = field(default_factory=PolicyState)


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
) -> tuple[ScaleDecision, AutoscalerState]:
    """``keep_alive`` set: the keep-alive policy decides the on-demand count instead of the KPA
    (whose state is left as it was)."""
    if keep_alive is not None:
        chosen = keepalive.decide(keep_alive, window, now, cold_start_s)
        kpa_decision = kpa.KpaDecision(chosen.desired, False, chosen.reason, -1, True)
        kpa_state = state.kpa
    else:
        inputs = KpaInputs.observe(window, config, now, ready, reachable)
        kpa_decision, kpa_state = kpa.decide(config, inputs, now, state.kpa)
    policy_inputs = PolicyInputs(
        in_system=window.window_average(now, config.stable_window_s),
        current_provisioned=current_provisioned,
        concurrency=concurrency,
    )
    target, policy_state = provisioned_target(provision, policy_inputs, now, state.policy)
    provisioned = min(target.target, config.max_instances)
    desired = min(max(provisioned, kpa_decision.desired), config.max_instances)
    if provisioned > kpa_decision.desired:
        reason = f"provisioned {provisioned} ({target.reason}); KPA: {kpa_decision.reason}"
    else:
        reason = kpa_decision.reason
    decision = ScaleDecision(desired, provisioned, kpa_decision.panic, reason,
                             kpa_decision.activator_in_path)
    return decision, AutoscalerState(kpa_state, policy_state)
