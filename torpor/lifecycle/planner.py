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
   (seed 004). With the keep-alive policy (``decision.keep_idle_s``) each on-demand instance goes
   once idle for its own hold (:func:`keep_alive_scale_in`): the first in routing order for its
   warm keep-alive, the others for the keep-alive; with idle mode, frozen after the keep-alive
   and drained after their own warm keep-alive.
4. **Idle mode**: freeze provisioned instances READY with nothing in flight for ``idle_after_s``.
5. **Revisions without traffic**: each revision that takes traffic (a weight above 0 or a tag) is
   planned on its own, with its own decision (:func:`plan_revisions`). Once every one of them
   serves (or wants nothing), every live instance of a revision that takes no traffic drains
   ("replaced by revision N"): a redeploy or a rollback never leaves a gap, and a revision at 0 %
   and untagged scales to zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torpor.autoscaling.autoscaler import ScaleDecision
from torpor.lifecycle.state import InstanceState

_IDLE = frozenset({InstanceState.READY, InstanceState.FROZEN})
_SERVING = frozenset({InstanceState.READY, InstanceState.BUSY})
_NONE: frozenset[str] = frozenset()
HOLD_EPSILON_S = 1e-9  # a pass timed for the keep-alive's end finds it reached, float sums or not


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

    def __init__(self, id: str, revision: int, state: InstanceState, started_at: float,
                 ready_at: float | None = None, in_flight: int = 0, idle_since: float | None = None,
                 idle_transition: bool = False, pool_priority: int = 0) -> None:
        # written out: compiled by mypyc (make sim-compiled) these are native stores, where the
        # __init__ @dataclass generates stays interpreted; the same fields, defaults and order
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "revision", revision)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "started_at", started_at)
        object.__setattr__(self, "ready_at", ready_at)
        object.__setattr__(self, "in_flight", in_flight)
        object.__setattr__(self, "idle_since", idle_since)
        object.__setattr__(self, "idle_transition", idle_transition)
        object.__setattr__(self, "pool_priority", pool_priority)


@dataclass(frozen=True)
class FunctionView:
    """One revision that takes traffic, as the planner sees it."""

    revision: int  # the revision this view plans
    instances: tuple[InstanceView, ...]  # every live instance of the function, of any revision
    idle_mode: bool = False
    idle_after_s: float = 0.0
    in_backoff: bool = False  # a cold start failed recently: start nothing yet
    pools: tuple[str, ...] = ()  # where new instances may go, best first (empty: anywhere)

    def __init__(self, revision: int, instances: tuple[InstanceView, ...], idle_mode: bool = False,
                 idle_after_s: float = 0.0, in_backoff: bool = False, pools: tuple[str, ...] = ()) -> None:
        # written out: compiled by mypyc (make sim-compiled) these are native stores, where the
        # __init__ @dataclass generates stays interpreted; the same fields, defaults and order
        object.__setattr__(self, "revision", revision)
        object.__setattr__(self, "instances", instances)
        object.__setattr__(self, "idle_mode", idle_mode)
        object.__setattr__(self, "idle_after_s", idle_after_s)
        object.__setattr__(self, "in_backoff", in_backoff)
        object.__setattr__(self, "pools", pools)


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


def provisioned_ids(current: Sequence[InstanceView], count: int) -> frozenset[str]:
    """The oldest ``count`` instances (by start time) are the provisioned ones."""
    if count == 0:  # the usual case: nothing to sort
        return _NONE
    oldest = sorted(current, key=lambda i: i.started_at)
    return frozenset(i.id for i in oldest[:count])


def scale_in_victims(current: Sequence[InstanceView], provisioned: frozenset[str],
                     surplus: int) -> list[InstanceView]:
    """``surplus`` idle instances to drain: on-demand first, lowest-priority pool, newest first."""
    idle = [i for i in current if i.state in _IDLE and not i.idle_transition]
    idle.sort(key=lambda i: (i.id in provisioned, i.pool_priority, -(i.ready_at or i.started_at)))
    return idle[:max(0, surplus)]


def keep_alive_scale_in(current: Sequence[InstanceView], provisioned: frozenset[str], surplus: int,
                        now: float, decision: ScaleDecision,
                        idle_mode: bool) -> tuple[list[InstanceView], list[InstanceView]]:
    """The keep-alive policy's scale-in: (instances to drain, instances to freeze).

    Each on-demand instance goes once idle for its own hold (a provisioned one never goes for
    idleness): the first in routing order (provisioned first, then by ready time) holds for its
    warm keep-alive, the others for the keep-alive. With idle mode each is frozen after the
    keep-alive and drained after its warm keep-alive instead. At most ``surplus`` drain, newest
    first."""
    keep_s = decision.keep_idle_s
    assert keep_s is not None
    warm = decision.keep_warm_s
    order = sorted(current, key=lambda i: (i.id not in provisioned, i.ready_at is None,
                                           i.ready_at or i.started_at))
    eligible: list[InstanceView] = []
    freeze: list[InstanceView] = []
    for rank, instance in enumerate(order):
        if instance.id in provisioned or instance.state not in _IDLE or instance.idle_transition:
            continue
        hold = keep_alive_hold(rank, keep_s, warm, idle_mode)
        idle_s = idle_for(instance, now)
        if idle_s >= hold - HOLD_EPSILON_S:
            eligible.append(instance)
        elif idle_mode and instance.state == InstanceState.READY and idle_s >= keep_s - HOLD_EPSILON_S:
            freeze.append(instance)
    if len(eligible) > 1:
        eligible.sort(key=lambda i: (i.pool_priority, -(i.ready_at or i.started_at)))
    surplus = max(0, surplus)
    if idle_mode:
        freeze += [i for i in eligible[surplus:] if i.state == InstanceState.READY]
    return eligible[:surplus], freeze


def keep_alive_hold(rank: int, keep_s: float, warm: tuple[float, ...], idle_mode: bool) -> float:
    """How long the on-demand instance at ``rank`` in routing order (0: the first; provisioned
    instances come first) may stay idle before the keep-alive scale-in drains it, given the
    decision's keep-alive ``keep_s`` and warm keep-alives ``warm``: the first its warm keep-alive,
    the others the keep-alive; with idle mode each its own rank's warm keep-alive (the keep-alive
    past the tuple), frozen meanwhile once idle for the keep-alive. E.g. keep 0.25 s, warm (30.0,
    5.0): rank 0 → 30.0, rank 1 → 0.25 (idle mode: 5.0)."""
    if idle_mode:
        return warm[rank] if rank < len(warm) else keep_s
    return warm[0] if rank == 0 and warm else keep_s


def idle_for(instance: InstanceView, now: float) -> float:
    """How long the instance has had nothing in flight (0 while busy or not yet routable)."""
    if instance.in_flight or instance.idle_since is None:
        return 0.0
    return now - instance.idle_since


def plan(view: FunctionView, decision: ScaleDecision, now: float) -> Plan:
    """The plan when one revision takes all the traffic."""
    revision = view.revision
    for instance in view.instances:
        if instance.revision != revision:
            return plan_revisions((view,), (decision,), now)[0]
    return _scale(view, decision, now, view.instances)  # no instance of another revision to drain


def plan_revisions(views: Sequence[FunctionView], decisions: Sequence[ScaleDecision],
                   now: float) -> list[Plan]:
    """One plan per revision that takes traffic (``views[k]`` scaled by ``decisions[k]``); the
    drains of revisions that take no traffic ride on the first plan."""
    plans = [_scale(view, decision, now, [i for i in view.instances if i.revision == view.revision])
             for view, decision in zip(views, decisions, strict=True)]
    if not views:
        return plans
    routed = {view.revision for view in views}
    settled = all(decision.desired == 0 or any(
        i.state in _SERVING for i in view.instances if i.revision == view.revision)
        for view, decision in zip(views, decisions, strict=True))
    if settled:
        unrouted = [i for i in views[0].instances if i.revision not in routed]
        if unrouted:
            why = (f"replaced by revision {views[0].revision}" if len(views) == 1
                   else "its revision takes no traffic")
            drains = tuple(Drain(i.id, why) for i in unrouted)
            plans[0] = replace(plans[0], drain=plans[0].drain + drains)
    return plans


def _scale(view: FunctionView, decision: ScaleDecision, now: float,
           current: Sequence[InstanceView]) -> Plan:
    """Rules 1-4 for the instances of ``view.revision`` (``current``)."""
    provisioned = provisioned_ids(current, decision.provisioned)
    desired = decision.desired
    starts: list[Start] = []
    drains: list[Drain] = []
    if len(current) < desired and not view.in_backoff:
        marked = len(provisioned)
        starts = [Start(provisioned=marked + n < decision.provisioned, pools=view.pools)
                  for n in range(desired - len(current))]
    elif len(current) > desired and decision.keep_idle_s is None:
        drains = [Drain(i.id, "scale in")
                  for i in scale_in_victims(current, provisioned, len(current) - desired)]
    kept_frozen: list[str] = []
    if decision.keep_idle_s is not None and not starts:
        victims, to_freeze = keep_alive_scale_in(current, provisioned, len(current) - desired, now,
                                                 decision, view.idle_mode)
        drains = [Drain(i.id, "scale in") for i in victims]
        kept_frozen = [i.id for i in to_freeze]
    freeze: list[str] = []
    if view.idle_mode:
        draining = {d.instance_id for d in drains}
        freeze = [
            i.id for i in current
            if i.id in provisioned and i.id not in draining and i.state == InstanceState.READY
            and i.in_flight == 0 and not i.idle_transition and i.idle_since is not None
            and now - i.idle_since >= view.idle_after_s
        ] + kept_frozen
    return Plan(provisioned, tuple(starts), tuple(drains), tuple(freeze))


__all__ = ["Drain", "FunctionView", "InstanceView", "Plan", "Start", "keep_alive_hold", "plan",
           "plan_revisions"]
