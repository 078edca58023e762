"""The reconcile planner: pure. ``(snapshot of a function's instances, decision, now) → Plan``.

The reconciler takes a :class:`FunctionView` (plain data copied from its instances), asks
:func:`plan` what to do, and only carries the :class:`Plan` out. The rules, in order:

1. **Provisioned marking**: the oldest ``decision.provisioned`` live instances of the current
   revision are the provisioned ones (routed to first, never removed for idleness).
2. **Scale out** (``live < desired``, not in a cold-start backoff): start ``desired − live``
   instances; the first ones are provisioned until the provisioned count is reached. Each start
   carries the function's acceptable pools, best first.
3. **Scale in** (``live > desired``): drain the surplus among idle instances (READY or FROZEN; a
   busy or starting one is never a victim). Victim order: on-demand before provisioned, then the
   lowest-priority pool first, then the newest first — the reverse of the order they were added
   (seed 004).
4. **Idle mode**: freeze provisioned instances READY with nothing in flight for ``idle_after_s``.
5. **Old revisions**: once an instance of the current revision serves (or nothing is wanted),
   every live instance of an older revision drains ("replaced by revision N").
"""

from __future__ import annotations

from dataclasses import dataclass

from torpor.autoscaling.autoscaler import ScaleDecision
from torpor.lifecycle.state import InstanceState

_IDLE = frozenset({InstanceState.READY, InstanceState.FROZEN})
_SERVING = frozenset({InstanceState.READY, InstanceState.BUSY})


@dataclass(frozen=True)
class InstanceView:
    """What the planner needs to know of one live instance (STARTING, READY, BUSY or FROZEN)."""

    id: str
    revision: int
    state: InstanceState
    started_at: float
    ready_at: float | None = None
    in_flight: int = 0
    idle_since: float | None = None  # when in-flight last dropped to 0 (None: not routable yet)
    idle_transition: bool = False  # freezing or thawing right now
    pool_priority: int = 0  # higher: kept longer (on-prem before cloud)


@dataclass(frozen=True)
class FunctionView:
    revision: int  # the current one
    instances: tuple[InstanceView, ...]
    idle_mode: bool = False
    idle_after_s: float = 0.0
    in_backoff: bool = False  # a cold start failed recently: start nothing yet
    pools: tuple[str, ...] = ()  # where new instances may go, best first (empty: anywhere)


@dataclass(frozen=True)
class Start:
    provisioned: bool
    pools: tuple[str, ...] = ()


@dataclass(frozen=True)
class Drain:
    instance_id: str
    why: str


@dataclass(frozen=True)
class Plan:
    provisioned: frozenset[str] = frozenset()  # ids of the instances that are provisioned now
    start: tuple[Start, ...] = ()
    drain: tuple[Drain, ...] = ()
    freeze: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.start or self.drain or self.freeze)


def provisioned_ids(current: list[InstanceView], count: int) -> frozenset[str]:
    """The oldest ``count`` instances (by start time) are the provisioned ones."""
    oldest = sorted(current, key=lambda i: i.started_at)
    return frozenset(i.id for i in oldest[:count])


def scale_in_victims(current: list[InstanceView], provisioned: frozenset[str],
                     surplus: int) -> list[InstanceView]:
    """``surplus`` idle instances to drain: on-demand first, lowest-priority pool, newest first."""
    idle = [i for i in current if i.state in _IDLE and not i.idle_transition]
    idle.sort(key=lambda i: (i.id in provisioned, i.pool_priority, -(i.ready_at or i.started_at)))
    return idle[:max(0, surplus)]


def plan(view: FunctionView, decision: ScaleDecision, now: float) -> Plan:
    current = [i for i in view.instances if i.revision == view.revision]
    provisioned = provisioned_ids(current, decision.provisioned)
    desired = decision.desired
    starts: list[Start] = []
    drains: list[Drain] = []
    if len(current) < desired and not view.in_backoff:
        marked = len(provisioned)
        starts = [Start(provisioned=marked + n < decision.provisioned, pools=view.pools)
                  for n in range(desired - len(current))]
    elif len(current) > desired:
        drains = [Drain(i.id, "scale in")
                  for i in scale_in_victims(current, provisioned, len(current) - desired)]
    draining = {d.instance_id for d in drains}
    freeze: list[str] = []
    if view.idle_mode:
        freeze = [
            i.id for i in current
            if i.id in provisioned and i.id not in draining and i.state == InstanceState.READY
            and i.in_flight == 0 and not i.idle_transition and i.idle_since is not None
            and now - i.idle_since >= view.idle_after_s
        ]
    serving = any(i.state in _SERVING for i in current)
    if serving or desired == 0:
        drains += [Drain(i.id, f"replaced by revision {view.revision}")
                   for i in view.instances if i.revision != view.revision]
    return Plan(provisioned=provisioned, start=tuple(starts), drain=tuple(drains),
                freeze=tuple(freeze))


__all__ = ["Drain", "FunctionView", "InstanceView", "Plan", "Start", "plan"]
