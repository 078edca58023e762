"""The reconciler: the only code with side effects on instances. It decides nothing itself.

Each tick (and at once when poked: a request waits, an instance exited, a spec changed) it asks the
autoscaler for a decision per revision that takes traffic (each revision has its own route, queue,
recorder and autoscaler state) and the planner (``planner.py``, pure) for the plans, then carries them
out through the :class:`~torpor.backends.InstanceBackend`: cold starts (with exponential backoff
after failures), drains, freezes. It notices exits at once and records every fact in the store off
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

from torpor.autoscaling import autoscaler
from torpor.autoscaling.autoscaler import ScaleDecision
from torpor.autoscaling.keepalive import KeepAliveConfig
from torpor.autoscaling.scaling_policies import PolicyState, ProvisionConfig
from torpor.backends import BackendError, CodeRef, InstanceBackend, InstancePlan, StartFailed
from torpor.clock import Clock
from torpor.constants import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    DRAIN_POLL_S,
    HEARTBEAT_S,
    RECONCILE_INTERVAL_S,
    STOP_GRACE_S,
)
from torpor.errors import ColdStartFailed
from torpor.gateway.route import Endpoint, FunctionRoute
from torpor.gateway.routing_policies import RoutingPolicy
from torpor.gateway.traffic import Traffic, TrafficConfig
from torpor.gateway.upstream import UpstreamClient
from torpor.lifecycle import planner
from torpor.lifecycle.idle import IdleMode
from torpor.lifecycle.initialize import initialize
from torpor.lifecycle.instance import FunctionRuntime, Instance, RevisionRuntime
from torpor.lifecycle.state import InstanceFacts, InstanceState
from torpor.lifecycle.template_idle import DEFAULT_RETIRE_IDLE_S, should_retire
from torpor.metering.ledger import Ledger
from torpor.placement import gpus as gpu_placement
from torpor.placement.pools import pools_by_priority
from torpor.spec import FunctionSpec
from torpor.store import Store

log = logging.getLogger(__name__)

_SERVING = frozenset({InstanceState.READY, InstanceState.BUSY, InstanceState.FROZEN})


class Reconciler:
    def __init__(self, store: Store, clock: Clock, backend: InstanceBackend, *,
                 gpu_quota: float | None = None,
                 gpu_source: gpu_placement.GpuSource | None = None) -> None:
        self.store = store
        self.clock = clock
        self.backend = backend
        self.gpu_quota = gpu_quota  # limits.gpus: GPUs all instances may hold at once
        self.placements: dict[str, gpu_placement.Placement] = {}  # instance id → its GPUs
        self.gpu_source = gpu_source  # this machine's GPUs sampled (scaling on GPU utilisation)
        self.functions: dict[str, FunctionRuntime] = {}
        self.routes: dict[str, Traffic] = {}  # what the gateway reads
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_ready: Callable[[Instance], None] = lambda instance: None
        # Why the next instance of a revision may not start yet for a reason above the
        # reconciler (a tenant's quota), given where it would go; None: it may start.
        self.admit: Callable[[FunctionRuntime, RevisionRuntime, gpu_placement.Placement | None],
                             str | None] = lambda fn, rev, placement: None
        self.ledger = Ledger(store, clock)
        self.idle = IdleMode(backend, clock, self.ledger, self._background)
        self._last_heartbeat = 0.0
        self._wake_at = math.inf  # the next instance keep-alive's end (the keep-alive policy)
        self._sleep_until = math.inf  # when the loop's current wait ends (it passes then anyway)
        # a pass at the keep-alive's end of an instance that went idle between passes
        self._keep_alive_timer: asyncio.TimerHandle | None = None
        self._keep_alive_timer_at = math.inf
        self.template_retire_idle_s = DEFAULT_RETIRE_IDLE_S  # the server config's templates:
        # (function, revision) → when its template was retired for being idle
        self.retired_templates: dict[tuple[str, int], float] = {}

    # deploy / delete ---------------------------------------------------------------------------

    def apply(self, spec: FunctionSpec, revision: int, code: CodeRef, source: str,
              created_at: float, updated_at: float, provision: ProvisionConfig | None = None,
              model: CodeRef | None = None, traffic: TrafficConfig | None = None,
              created_by: str | None = None) -> FunctionRuntime:
        """Install a deployed revision and the split (default: all traffic to it, tags kept).
        Instances of revisions that lose their traffic keep serving until it is served elsewhere.

        ``provision`` is a provisioning config set through the API; without one the spec's
        ``scaling.provisioned`` is the static target.
        """
        fn = self.install(spec.name, created_at, updated_at,
                          provision or ProvisionConfig(target=spec.scaling.provisioned))
        self.add_revision(fn, revision, spec, code, source, updated_at, model, created_by)
        fn.latest = max(fn.latest, revision)
        for rev in fn.revisions.values():
            rev.next_decision_at = 0.0
        self.set_traffic(fn.name, traffic or TrafficConfig.only(revision, fn.config.tags))
        return fn

    def install(self, name: str, created_at: float, updated_at: float,
                provision: ProvisionConfig) -> FunctionRuntime:
        """The function's runtime, created on its first deploy; its revisions are added apart."""
        fn = self.functions.get(name)
        if fn is None:
            fn = FunctionRuntime(name=name, traffic=Traffic(name), created_at=created_at,
                                 updated_at=updated_at, provision=provision)
            self.functions[name] = fn
            self.routes[name] = fn.traffic
        fn.provision, fn.updated_at = provision, updated_at
        return fn

    def add_revision(self, fn: FunctionRuntime, number: int, spec: FunctionSpec, code: CodeRef,
                     source: str, created_at: float, model: CodeRef | None = None,
                     created_by: str | None = None) -> RevisionRuntime:
        """Hold a revision in memory (its own route and autoscaler) so traffic can go to it."""
        existing = fn.revisions.get(number)
        if existing is not None:
            return existing
        route = FunctionRoute(
            spec.name,
            clock=self.clock,
            max_queued=spec.queue.max_queued,
            queue_timeout_s=spec.queue.timeout_s,
            timeout_s=spec.timeout_s,
            policy=RoutingPolicy.make(spec.routing.policy),
            on_demand=self.poke,
            revision=number,
        )
        rev = RevisionRuntime(number=number, spec=spec, code=code, source=source, route=route,
                              created_at=created_at, model=model, created_by=created_by)
        route.observer = rev.recorder
        route.thaw = lambda endpoint: self.idle.thaw(fn, endpoint)
        route.on_idle = lambda endpoint: self._went_idle(rev, endpoint)
        fn.revisions[number] = rev
        fn.traffic.set(fn.config, {n: r.route for n, r in fn.revisions.items()})
        return rev

    def set_traffic(self, name: str, config: TrafficConfig) -> None:
        """Split ``name``'s traffic; every revision ``config`` routes to must be in memory
        (:meth:`add_revision`). Requests already queued or in flight stay where they are."""
        fn = self.functions[name]
        missing = sorted(config.routed - fn.revisions.keys())
        if missing:
            raise KeyError(f"revisions {missing} of {name!r} are not loaded")
        for number in config.routed:
            rev = fn.revisions[number]
            if not rev.prepared:
                self.backend.prepare(rev.plan)
                rev.prepared = True
            rev.next_decision_at = 0.0
        fn.traffic.set(config, {n: r.route for n, r in fn.revisions.items()})
        self.poke()

    async def remove(self, name: str) -> None:
        """Stop routing to a function, answer its queue, drain and stop its instances."""
        fn = self.functions.pop(name)
        self.routes.pop(name, None)
        self.backend.retire(name)
        for key in [k for k in self.retired_templates if k[0] == name]:
            del self.retired_templates[key]
        for rev in fn.revisions.values():
            rev.route.fail_waiters(ColdStartFailed(f"function {name!r} was deleted"))
        await asyncio.gather(*(self._drain(fn, i, "function deleted") for i in fn.live()))

    # the loop ----------------------------------------------------------------------------------

    def poke(self) -> None:
        """Reconcile now (a request is waiting, an instance exited, a spec changed)."""
        self._wake.set()

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="reconciler")

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if self.clock.now() - self._last_heartbeat >= HEARTBEAT_S:
                self._last_heartbeat = self.clock.now()
                self.ledger.heartbeat()
            for fn in list(self.functions.values()):
                try:
                    self.reconcile(fn)
                except Exception:
                    log.exception("reconciling %s failed", fn.name)
            now = self.clock.now()
            wait_s = min(RECONCILE_INTERVAL_S, max(0.0, self._wake_at - now))
            self._wake_at = math.inf
            self._sleep_until = now + wait_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
            self._sleep_until = math.inf

    def _went_idle(self, rev: RevisionRuntime, endpoint: Endpoint) -> None:
        """An instance has nothing in flight (the gateway says): under the keep-alive policy,
        pass when its keep-alive ends. A pass sets its wake only for instances idle at that pass
        (:meth:`_wake_for_keep_alive`), so one that went idle just after a pass was kept until the
        next (up to RECONCILE_INTERVAL_S): idle 0.25-0.5 s instead of its 0.25 s keep-alive, for
        44 % of the drains on 90 s of an Azure LLM trace, and 10 % fewer cold starts than the
        policy (and the simulator) gives. One timer, for the earliest such end."""
        keep_s = rev.decision.keep_idle_s
        if keep_s is None or self._stopping:
            return
        at = endpoint.idle_since + keep_s
        if at >= min(self._sleep_until, self._keep_alive_timer_at):
            return  # a pass comes by then anyway
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop runs passes (a test driving reconcile() itself)
        if self._keep_alive_timer is not None:
            self._keep_alive_timer.cancel()
        self._keep_alive_timer_at = at
        self._keep_alive_timer = loop.call_later(max(0.0, at - self.clock.now()),
                                                 self._keep_alive_ended)

    def _keep_alive_ended(self) -> None:
        self._keep_alive_timer, self._keep_alive_timer_at = None, math.inf
        self.poke()

    def set_provision(self, name: str, provision: ProvisionConfig) -> None:
        fn = self.functions[name]
        fn.provision = provision
        for rev in fn.revisions.values():
            rev.autoscaler = autoscaler.AutoscalerState(rev.autoscaler.kpa, PolicyState())
            rev.next_decision_at = 0.0
        self.poke()

    def reconcile(self, fn: FunctionRuntime) -> None:
        now = self.clock.now()
        planned = self.planned(fn)
        for rev in fn.revisions.values():
            if rev in planned:
                # Decide every tick_s, and at once while requests wait (e.g. at zero instances).
                if now >= rev.next_decision_at or rev.route.queued > 0:
                    self._decide(fn, rev, fn.live(rev.number), now)
            elif rev.decision.desired or rev.decision.provisioned:
                rev.decision = ScaleDecision(0, 0, False, "no traffic")
        plans = planner.plan_revisions([self.view(fn, rev, now) for rev in planned],
                                       [rev.decision for rev in planned], now)
        waiting = [reason for rev, plan in zip(planned, plans, strict=True)
                   if (reason := self.carry_out(fn, rev, plan)) is not None]
        self._set_waiting(fn, waiting[0] if waiting else None)
        self._wake_for_keep_alive(fn, planned, now)
        self._retire_unused(fn)
        self._retire_idle_templates(fn, now)

    def _wake_for_keep_alive(self, fn: FunctionRuntime, planned: list[RevisionRuntime],
                             now: float) -> None:
        """The keep-alive policy drains an instance when its own keep-alive ends: pass then, not
        up to RECONCILE_INTERVAL_S later (each such wait is instance-seconds for nothing)."""
        for rev in planned:
            keep_s = rev.decision.keep_idle_s
            if keep_s is None:
                continue
            holds = {keep_s, *rev.decision.keep_warm_s}
            for instance in fn.live(rev.number):
                endpoint = instance.endpoint
                if endpoint is not None and endpoint.in_flight == 0 and instance.facts.draining_at is None:
                    for hold in holds:
                        if endpoint.idle_since + hold > now:
                            self._wake_at = min(self._wake_at, endpoint.idle_since + hold)

    def _retire_idle_templates(self, fn: FunctionRuntime, now: float) -> None:
        """What the backend holds between instances (a template and its spare) is memory held for
        nothing while nobody uses a revision that takes traffic: retire it; the next cold start
        builds it again. (A revision that loses its traffic is retired by :meth:`_retire_unused`.)"""
        for rev in fn.routed():
            exits = (i.facts.exited_at or 0.0 for i in fn.instances.values()
                     if i.revision == rev.number)
            last_used_at = max(rev.route.last_request_at or 0.0, rev.created_at, fn.updated_at,
                               max(exits, default=0.0))
            # whether a template exists is asked only once it would be retired: the backend's
            # answer measures the template's memory (a /proc read, ~1-5 ms), and this runs on
            # every pass, the one a waiting request (a cold start, a thaw) triggers included
            if should_retire(live_instances=len(fn.live(rev.number)), queued=rev.route.queued,
                             last_used_at=last_used_at, now=now,
                             retire_idle_s=self.template_retire_idle_s) and \
                    self.backend.function_info(fn.name, rev.number) is not None:
                self.backend.retire(fn.name, rev.number)
                self.retired_templates[(fn.name, rev.number)] = now
                self._event(fn.name, "template", f"template of revision {rev.number} retired: no "
                            f"instance and no request for {self.template_retire_idle_s:g}s; the "
                            "next cold start rebuilds it")

    @staticmethod
    def planned(fn: FunctionRuntime) -> list[RevisionRuntime]:
        """Revisions that take traffic, and those that lost it while requests still wait in their
        queue (they are served where they started); oldest first."""
        routed = fn.config.routed
        return [rev for number, rev in sorted(fn.revisions.items())
                if number in routed or rev.route.queued > 0]

    def _retire_unused(self, fn: FunctionRuntime) -> None:
        """A revision without traffic and without instances: retire its template; forget it
        unless it is the newest (the store keeps it for a rollback)."""
        routed = fn.config.routed
        for number, rev in list(fn.revisions.items()):
            if number in routed or rev.route.in_system > 0 or any(
                    i.revision == number for i in fn.instances.values()):
                continue
            if rev.prepared:
                rev.prepared = False
                self.backend.retire(fn.name, number)
                self._event(fn.name, "retired", f"revision {number} takes no traffic: scaled to "
                                                "zero, template retired")
            if number != fn.latest:
                del fn.revisions[number]
                self.retired_templates.pop((fn.name, number), None)
                fn.traffic.set(fn.config, {n: r.route for n, r in fn.revisions.items()})

    def view(self, fn: FunctionRuntime, rev: RevisionRuntime, now: float) -> planner.FunctionView:
        """A snapshot of the function's live instances, as plain data for the planner."""
        priority = self.backend.pool_priorities
        instances = tuple(
            planner.InstanceView(
                id=i.id, revision=i.revision, state=i.state, started_at=i.facts.started_at,
                ready_at=i.facts.ready_at, in_flight=i.in_flight,
                idle_since=i.endpoint.idle_since if i.endpoint is not None else None,
                idle_transition=i.idle_transition() is not None or self.idle.in_transition(i),
                pool_priority=priority.get(i.pool or "", 0),
            )
            for i in fn.live()
        )
        scaling = rev.spec.scaling
        return planner.FunctionView(revision=rev.number, instances=instances,
                                    idle_mode=scaling.idle_mode, idle_after_s=scaling.idle_after_s,
                                    in_backoff=now < rev.backoff_until)

    def carry_out(self, fn: FunctionRuntime, rev: RevisionRuntime,
                  plan: planner.Plan) -> str | None:
        """Carry out one revision's plan; returns why a wanted instance waits (None: none waits)."""
        for instance in fn.live(rev.number):
            instance.provisioned = instance.id in plan.provisioned
            if instance.endpoint is not None:
                instance.endpoint.provisioned = instance.provisioned
        waiting = None
        for start in plan.start:
            placement, waiting = self.place_next(fn, start.pools, rev)
            if waiting is None:
                waiting = self.admit(fn, rev, placement)
            if waiting is not None:
                break  # GPUs or a quota are full: the next exit pokes us and we try again
            self._spawn(fn, rev, start, placement)
        for drain in plan.drain:
            victim = fn.instances.get(drain.instance_id)
            if victim is not None:
                self._drain_soon(fn, victim, drain.why)
        for instance_id in plan.freeze:
            idle = fn.instances.get(instance_id)
            if idle is not None:
                self.idle.freeze(fn, idle)
        return waiting

    def _decide(self, fn: FunctionRuntime, rev: RevisionRuntime, live: list[Instance],
                now: float) -> None:
        ready = sum(1 for i in live if i.state in _SERVING)
        # The provisioning config set through the API is the primary revision's (the largest
        # share); every other revision keeps its spec's static provisioned count.
        primary = fn.config.weights and rev.number == fn.config.primary
        provision = fn.provision if primary else ProvisionConfig(
            target=rev.spec.scaling.provisioned)
        decision, rev.autoscaler = autoscaler.decide(
            rev.kpa_config, provision, rev.recorder,
            concurrency=rev.spec.concurrency, ready=ready,
            current_provisioned=sum(1 for i in live if i.provisioned),
            now=now, state=rev.autoscaler, gpu=self._gpu_signal(rev, live),
            keep_alive=KeepAliveConfig.from_spec(rev.spec.scaling, rev.spec.concurrency),
            cold_start_s=rev.cold_start_s,
        )
        # the keep-alive policy reads only what is in the system now: it decides on every pass
        rev.next_decision_at = now + (0.0 if decision.keep_idle_s is not None
                                      else rev.spec.scaling.tick_s)
        if decision.desired != rev.decision.desired:
            self._event(fn.name, "scaled", f"{fn.name} {rev.decision.desired}→{decision.desired}: "
                                           f"{decision.reason} (revision {rev.number})")
        rev.decision = decision
        rev.route.activator_in_path = decision.activator_in_path

    def _gpu_signal(self, rev: RevisionRuntime,
                    live: list[Instance]) -> autoscaler.GpuSignal | None:
        """The load on the GPUs of the revision's serving instances on this machine (None when
        there is no GPU source, or no serving instance has a sampled GPU)."""
        spec = rev.spec
        if self.gpu_source is None or spec.resources.gpus + spec.resources.gpu_memory_mb == 0:
            return None
        nodes = self.gpu_nodes()
        local = nodes[0] if nodes else None
        if local is None:
            return None
        placements = [i.placement for i in live if i.state in _SERVING and i.placement is not None
                      and i.placement.node == local.node]
        samples = {s.index: s for s in self.gpu_source.sample()}
        load = gpu_placement.function_load(placements, samples,
                                           {d.index: d.memory_mb for d in local.devices})
        if load is None:
            return None
        return autoscaler.GpuSignal(load.utilization_pct, spec.scaling.gpu_target_pct,
                                    load.memory_fraction)

    # placing -----------------------------------------------------------------------------------

    def gpu_nodes(self, pools: tuple[str, ...] = ()) -> tuple[gpu_placement.NodeGpus, ...]:
        """The GPUs of every live node (of ``pools`` only, when given), as the backend knows them."""
        return tuple(gpu_placement.NodeGpus(n.id, n.gpus) for n in self.backend.nodes()
                     if n.alive and (not pools or n.pool in pools))

    def place_next(self, fn: FunctionRuntime, pools: tuple[str, ...] = (),
                   rev: RevisionRuntime | None = None,
                   ) -> tuple[gpu_placement.Placement | None, str | None]:
        """Where the next instance of ``rev`` (default: the newest revision) goes:
        ``(placement, None)``, or ``(None, why it waits)``.

        Each pool's nodes are tried in turn, best first, so a GPU in the on-prem pool is taken
        before one in the cloud pool (seed 004): ``pools`` when the start names them, else the
        revision's ``placement.pools``, else every pool, by the backend's pool priorities.
        """
        spec = (rev or fn.current).spec
        resources = spec.resources
        request = gpu_placement.GpuRequest(gpus=resources.gpus, gpu_memory_mb=resources.gpu_memory_mb)
        if request.empty or self.backend.places_gpus:
            return None, None  # no GPU asked, or the backend's scheduler places GPUs itself
        if not pools:
            pools = pools_by_priority(self.backend.pool_priorities, spec.placement.pools)
        groups: list[tuple[str, ...]] = [(pool,) for pool in pools] or [()]
        reasons: list[tuple[bool, str]] = []
        for group in groups:
            nodes = self.gpu_nodes(group)
            decision = gpu_placement.place(nodes, self.placements, request, self.gpu_quota)
            if isinstance(decision, gpu_placement.Placed):
                return decision.placement, None
            reasons.append((any(n.devices for n in nodes), decision.reason))
        # the best pool that has GPUs at all says most about why
        return None, next((r for has_gpus, r in reasons if has_gpus), reasons[0][1])

    def _set_waiting(self, fn: FunctionRuntime, reason: str | None) -> None:
        """Say once (an event) why a wanted instance is not started; ``torpor get`` shows it."""
        if reason != fn.waiting and reason is not None:
            self._event(fn.name, "waiting", reason)
        fn.waiting = reason

    def _unplace(self, instance: Instance) -> None:
        """The instance's process is gone: its GPUs are free for the next one."""
        if self.placements.pop(instance.id, None) is not None:
            self.poke()

    # starting ----------------------------------------------------------------------------------

    def _spawn(self, fn: FunctionRuntime, rev: RevisionRuntime, start: planner.Start,
               placement: gpu_placement.Placement | None = None) -> None:
        instance_id = f"{fn.name}-{rev.number}-{secrets.token_hex(3)}"
        instance = Instance(
            id=instance_id, function=fn.name, revision=rev.number,
            facts=InstanceFacts(started_at=self.clock.now()),
            provisioned=start.provisioned, placement=placement,
        )
        if placement is not None:
            self.placements[instance_id] = placement
        fn.instances[instance_id] = instance
        self.ledger.transition(instance.ledger_record(rev.spec), InstanceState.STARTING)
        rev.route.failure = None
        plan = InstancePlan(instance_id, rev.plan, pools=start.pools, placement=placement)
        self._background(self._start(fn, rev, instance, plan), f"start {instance_id}")

    def _wanted(self, fn: FunctionRuntime, rev: RevisionRuntime) -> bool:
        """Does the revision still take traffic (or hold queued requests) in a live function?"""
        return self.functions.get(fn.name) is fn and (
            rev.number in fn.config.routed or rev.route.queued > 0)

    async def _start(self, fn: FunctionRuntime, rev: RevisionRuntime, instance: Instance,
                     plan: InstancePlan) -> None:
        spec = rev.spec
        self._save(instance)
        try:
            instance.started = await self.backend.start(plan)
        except StartFailed as exc:
            await self._start_failed(fn, rev, instance, str(exc), exc.log_tail)
            return
        except (BackendError, OSError) as exc:
            await self._start_failed(fn, rev, instance, str(exc), "")
            return
        instance.facts.listening_at = self.clock.now()
        client = UpstreamClient(instance.started.address)
        try:
            instance.timings = await initialize(client, command=spec.runtime.command is not None,
                                                timeout_s=spec.initialize_timeout_s)
        except StartFailed as exc:
            await client.close()
            await self._start_failed(fn, rev, instance, str(exc),
                                     self.backend.log_tail(instance.id))
            return
        except BaseException:
            await client.close()
            raise
        self._background(self._watch(fn, instance), f"watch {instance.id}")
        if instance.facts.draining_at is not None or not self._wanted(fn, rev) or self._stopping:
            await client.close()
            await self._drain(fn, instance, "no longer needed")
            return
        instance.facts.ready_at = self.clock.now()
        instance.endpoint = Endpoint(instance.id, spec.concurrency, client,
                                     ready_at=instance.facts.ready_at,
                                     provisioned=instance.provisioned, idle=instance.facts)
        rev.failures, rev.backoff_until, rev.last_error = 0, 0.0, None
        rev.route.add_endpoint(instance.endpoint)
        self.ledger.transition(instance.ledger_record(spec), InstanceState.READY)
        self._save(instance)
        self.on_ready(instance)
        total = instance.cold_start()["total_s"]
        if isinstance(total, float):
            rev.cold_start_s = rev.cold_starts.observe(total)
        self._event(fn.name, "started", f"instance {instance.id} ready in {total:.3f}s")

    async def _start_failed(self, fn: FunctionRuntime, rev: RevisionRuntime, instance: Instance,
                            reason: str, log_tail: str) -> None:
        exit_ = await self.backend.stop(instance.id, STOP_GRACE_S)
        self._unplace(instance)
        reason = exit_.reason or reason  # e.g. killed for passing memory_mb during warmup
        message = f"instance {instance.id} of function {fn.name!r} failed to start: {reason}"
        if log_tail:
            message += f"\n--- last lines of its stderr ---\n{log_tail}"
        instance.facts.failure = reason
        instance.facts.exited_at = self.clock.now()
        instance.facts.exit_code = exit_.code
        self.ledger.transition(instance.ledger_record(rev.spec), None)
        self._save(instance)
        if not self._wanted(fn, rev):
            return
        rev.failures += 1
        # 1 s, 2 s, 4 s ... capped: a function that cannot start never spins.
        backoff_s = min(BACKOFF_BASE_S * 2 ** (rev.failures - 1), BACKOFF_MAX_S)
        rev.backoff_until = self.clock.now() + backoff_s
        rev.last_error = message
        self._event(fn.name, "start_failed", f"{message.splitlines()[0]} (retry in {backoff_s:g}s)")
        others = [i for i in fn.live(rev.number) if i is not instance]
        if not others:
            error = ColdStartFailed(message, retry_after_s=backoff_s)
            rev.route.failure = error
            rev.route.fail_waiters(error)
        self._background(self._end_backoff(rev, backoff_s), f"backoff {fn.name}")

    async def _end_backoff(self, rev: RevisionRuntime, delay_s: float) -> None:
        """After the backoff, requests queue again (and so trigger the next attempt). The sleep
        runs on the monotonic clock and ``now`` is the wall clock, which may trail it: a check made
        once could find the backoff not over and leave the function refusing requests for good, so
        it waits out what is left (a later failure's longer backoff included)."""
        await self.clock.sleep(delay_s)
        while (left := rev.backoff_until - self.clock.now()) > 0:
            await self.clock.sleep(left)
        rev.route.failure = None
        self.poke()

    # exits and stopping ------------------------------------------------------------------------

    async def _watch(self, fn: FunctionRuntime, instance: Instance) -> None:
        try:
            exit_ = await self.backend.wait(instance.id)
        except BackendError:
            self._unplace(instance)
            return  # already stopped and forgotten by the backend (a drain got there first)
        self._unplace(instance)
        facts = instance.facts
        if facts.exited_at is None:
            facts.exited_at = self.clock.now()
        facts.exit_code = exit_.code
        if exit_.reason is not None and facts.failure is None:
            facts.failure = exit_.reason  # e.g. "node <id> lost": the instance failed
        rev = fn.revision_of(instance)
        self.ledger.transition(instance.ledger_record(rev.spec), None)
        endpoint = instance.endpoint
        if endpoint is not None:
            rev.route.remove_endpoint(endpoint)
        if facts.draining_at is None and not self._stopping:
            how = exit_.reason or f"exited with code {exit_.code}"
            self._event(fn.name, "crashed", f"instance {instance.id} {how}")
            stderr = self.backend.log_tail(instance.id, max_lines=5)
            log.warning("instance %s %s\n%s", instance.id, how, stderr)
        self._save(instance)
        if endpoint is not None:
            while endpoint.in_flight > 0:  # let the gateway answer its requests first (502)
                await self.clock.sleep(DRAIN_POLL_S)
            await endpoint.client.close()
        fn.instances.pop(instance.id, None)
        self.poke()

    def _drain_soon(self, fn: FunctionRuntime, instance: Instance, why: str) -> None:
        if instance.facts.draining_at is None:
            self._background(self._drain(fn, instance, why), f"drain {instance.id}")

    async def _drain(self, fn: FunctionRuntime, instance: Instance, why: str) -> None:
        """No new requests; stop the instance once its in-flight requests are answered."""
        facts = instance.facts
        rev = fn.revision_of(instance)
        if facts.draining_at is None:
            facts.draining_at = self.clock.now()
            if facts.exited_at is None:
                self.ledger.transition(instance.ledger_record(rev.spec), InstanceState.DRAINING)
                self._event(fn.name, "stopping", f"instance {instance.id}: {why}")
        if instance.endpoint is not None:
            rev.route.remove_endpoint(instance.endpoint)
            deadline = self.clock.now() + rev.spec.timeout_s
            while instance.endpoint.in_flight > 0 and self.clock.now() < deadline:
                await self.clock.sleep(DRAIN_POLL_S)
        self._save(instance)
        if instance.started is not None and facts.exited_at is None:
            await self.idle.settle(instance)
            await self.backend.stop(instance.id, STOP_GRACE_S)

    # shutdown ----------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop every instance; nothing survives the server."""
        self._stopping = True
        self._wake.set()
        if self._keep_alive_timer is not None:
            self._keep_alive_timer.cancel()
        if self._loop_task is not None:
            await self._loop_task
        for fn in self.functions.values():
            for rev in fn.revisions.values():
                rev.route.fail_waiters(
                    ColdStartFailed(f"torpor is shutting down; {fn.name!r} stopped"))
        everything = [(fn, i) for fn in self.functions.values() for i in fn.instances.values()]
        await asyncio.gather(*(self._drain(fn, i, "server shutdown") for fn, i in everything
                               if i.started is not None and i.facts.exited_at is None),
                             return_exceptions=True)
        await self.backend.shutdown()
        for task in list(self._tasks):
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, instance in everything:
            if instance.endpoint is not None:
                await instance.endpoint.client.close()
            if instance.facts.exited_at is None:
                instance.facts.exited_at = self.clock.now()
                if instance.facts.draining_at is None:
                    instance.facts.draining_at = instance.facts.exited_at
            self.store.save_instance(instance.record())
        self.store.run_now(self.store.close_open_intervals, self.clock.now())

    # helpers -----------------------------------------------------------------------------------

    def _background(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    def _save(self, instance: Instance) -> None:
        if not self._stopping:
            self.store.submit(self.store.save_instance, instance.record())

    def _event(self, function: str, kind: str, message: str) -> None:
        log.info("%s: %s", function, message)
        self.store.submit(self.store.add_event, function, self.clock.now(), kind, message)
