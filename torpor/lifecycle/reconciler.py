"""The reconciler: the only code with side effects on instances. It decides nothing itself.

Each tick (and at once when poked: a request waits, an instance exited, a spec changed) it asks the
autoscaler for a decision and the planner (``planner.py``, pure) for a plan, then carries the plan
out through the :class:`~torpor.backends.InstanceBackend`: cold starts (with exponential backoff
after failures), drains, freezes. It notices exits at once and records every fact in the store off
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

from torpor.autoscaling import autoscaler
from torpor.autoscaling.keepalive import KeepAliveConfig, mean_cold_start
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
from torpor.gateway.upstream import UpstreamClient
from torpor.lifecycle import planner
from torpor.lifecycle.idle import IdleMode
from torpor.lifecycle.initialize import initialize
from torpor.lifecycle.instance import FunctionRuntime, Instance
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
        self.routes: dict[str, FunctionRoute] = {}  # what the gateway reads
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_ready: Callable[[Instance], None] = lambda instance: None
        self.ledger = Ledger(store, clock)
        self.idle = IdleMode(backend, clock, self.ledger, self._background)
        self._last_heartbeat = 0.0
        self.template_retire_idle_s = DEFAULT_RETIRE_IDLE_S  # the server config's templates:
        self.retired_templates: dict[str, float] = {}  # function → when its template was retired

    # deploy / delete ---------------------------------------------------------------------------

    def apply(self, spec: FunctionSpec, revision: int, code: CodeRef, source: str,
              created_at: float, updated_at: float, provision: ProvisionConfig | None = None,
              model: CodeRef | None = None) -> FunctionRuntime:
        """Install (or replace) a function's spec. Old instances keep serving until replaced.

        ``provision`` is a provisioning config set through the API; without one the spec's
        ``scaling.provisioned`` is the static target.
        """
        provision = provision or ProvisionConfig(target=spec.scaling.provisioned)
        existing = self.functions.get(spec.name)
        if existing is not None:
            route = existing.route
            route.max_queued = spec.queue.max_queued
            route.queue_timeout_s = spec.queue.timeout_s
            route.timeout_s = spec.timeout_s
            route.policy = RoutingPolicy.make(spec.routing.policy)
            route.failure = None
            existing.spec, existing.revision, existing.code = spec, revision, code
            existing.source, existing.updated_at, existing.model = source, updated_at, model
            existing.failures, existing.backoff_until, existing.last_error = 0, 0.0, None
            existing.provision = provision
            existing.next_decision_at = 0.0
            self.backend.prepare(existing.revision_plan)
            self.poke()
            return existing
        route = FunctionRoute(
            spec.name,
            clock=self.clock,
            max_queued=spec.queue.max_queued,
            queue_timeout_s=spec.queue.timeout_s,
            timeout_s=spec.timeout_s,
            policy=RoutingPolicy.make(spec.routing.policy),
            on_demand=self.poke,
        )
        fn = FunctionRuntime(spec=spec, revision=revision, code=code, source=source, route=route,
                             created_at=created_at, updated_at=updated_at, provision=provision,
                             model=model)
        route.observer = fn.recorder
        route.thaw = lambda endpoint: self.idle.thaw(fn, endpoint)
        self.functions[spec.name] = fn
        self.routes[spec.name] = route
        self.backend.prepare(fn.revision_plan)
        self.poke()
        return fn

    async def remove(self, name: str) -> None:
        """Stop routing to a function, answer its queue, drain and stop its instances."""
        fn = self.functions.pop(name)
        self.routes.pop(name, None)
        self.backend.retire(name)
        fn.route.fail_waiters(ColdStartFailed(f"function {name!r} was deleted"))
        await asyncio.gather(*(self._drain(fn, i, "function deleted") for i in fn.live(
            current_only=False)))

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECONCILE_INTERVAL_S)

    def set_provision(self, name: str, provision: ProvisionConfig) -> None:
        fn = self.functions[name]
        fn.provision = provision
        fn.autoscaler = autoscaler.AutoscalerState(fn.autoscaler.kpa, PolicyState())
        fn.next_decision_at = 0.0
        self.poke()

    def reconcile(self, fn: FunctionRuntime) -> None:
        now = self.clock.now()
        # Decide every tick_s, and at once while requests wait (e.g. a request at zero instances).
        if now >= fn.next_decision_at or fn.route.queued > 0:
            self._decide(fn, fn.live(), now)
        plan = planner.plan(self.view(fn, now), fn.decision, now)
        self.carry_out(fn, plan)
        self._retire_idle_template(fn, now)

    def _retire_idle_template(self, fn: FunctionRuntime, now: float) -> None:
        """What the backend holds between instances (a template and its spare) is memory held for
        nothing while nobody uses the function: retire it; the next cold start builds it again."""
        if self.backend.function_info(fn.name) is None:
            return
        last_used_at = max(fn.route.last_request_at or 0.0, fn.updated_at,
                           max((i.facts.exited_at or 0.0 for i in fn.instances.values()), default=0.0))
        if should_retire(live_instances=len(fn.live(current_only=False)), queued=fn.route.queued,
                         last_used_at=last_used_at, now=now,
                         retire_idle_s=self.template_retire_idle_s):
            self.backend.retire(fn.name)
            self.retired_templates[fn.name] = now
            self._event(fn.name, "template", f"template retired: no instance and no request for "
                        f"{self.template_retire_idle_s:g}s; the next cold start rebuilds it")

    def view(self, fn: FunctionRuntime, now: float) -> planner.FunctionView:
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
            for i in fn.live(current_only=False)
        )
        scaling = fn.spec.scaling
        return planner.FunctionView(revision=fn.revision, instances=instances,
                                    idle_mode=scaling.idle_mode, idle_after_s=scaling.idle_after_s,
                                    in_backoff=now < fn.backoff_until)

    def carry_out(self, fn: FunctionRuntime, plan: planner.Plan) -> None:
        for instance in fn.live():
            instance.provisioned = instance.id in plan.provisioned
            if instance.endpoint is not None:
                instance.endpoint.provisioned = instance.provisioned
        waiting = None
        for start in plan.start:
            placement, waiting = self.place_next(fn, start.pools)
            if waiting is not None:
                break  # the GPUs are full: the next exit pokes us and we try again
            self._spawn(fn, start, placement)
        self._set_waiting(fn, waiting)
        for drain in plan.drain:
            victim = fn.instances.get(drain.instance_id)
            if victim is not None:
                self._drain_soon(fn, victim, drain.why)
        for instance_id in plan.freeze:
            idle = fn.instances.get(instance_id)
            if idle is not None:
                self.idle.freeze(fn, idle)

    def _decide(self, fn: FunctionRuntime, live: list[Instance], now: float) -> None:
        ready = sum(1 for i in live if i.state in _SERVING)
        decision, fn.autoscaler = autoscaler.decide(
            fn.kpa_config, fn.provision, fn.recorder,
            concurrency=fn.spec.concurrency, ready=ready,
            current_provisioned=sum(1 for i in live if i.provisioned),
            now=now, state=fn.autoscaler, gpu=self._gpu_signal(fn, live),
            keep_alive=KeepAliveConfig.from_spec(fn.spec.scaling, fn.spec.concurrency),
            cold_start_s=fn.cold_start_s,
        )
        fn.next_decision_at = now + fn.spec.scaling.tick_s
        if decision.desired != fn.decision.desired:
            self._event(fn.name, "scaled",
                        f"{fn.name} {fn.decision.desired}→{decision.desired}: {decision.reason}")
        fn.decision = decision
        fn.route.activator_in_path = decision.activator_in_path

    def _gpu_signal(self, fn: FunctionRuntime, live: list[Instance]) -> autoscaler.GpuSignal | None:
        """The load on the GPUs of the function's serving instances on this machine (None when
        there is no GPU source, or no serving instance has a sampled GPU)."""
        if self.gpu_source is None or fn.spec.resources.gpus + fn.spec.resources.gpu_memory_mb == 0:
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
        return autoscaler.GpuSignal(load.utilization_pct, fn.spec.scaling.gpu_target_pct,
                                    load.memory_fraction)

    # placing -----------------------------------------------------------------------------------

    def gpu_nodes(self, pools: tuple[str, ...] = ()) -> tuple[gpu_placement.NodeGpus, ...]:
        """The GPUs of every live node (of ``pools`` only, when given), as the backend knows them."""
        return tuple(gpu_placement.NodeGpus(n.id, n.gpus) for n in self.backend.nodes()
                     if n.alive and (not pools or n.pool in pools))

    def place_next(self, fn: FunctionRuntime,
               pools: tuple[str, ...] = ()) -> tuple[gpu_placement.Placement | None, str | None]:
        """Where the next instance goes: ``(placement, None)``, or ``(None, why it waits)``.

        Each pool's nodes are tried in turn, best first, so a GPU in the on-prem pool is taken
        before one in the cloud pool (seed 004): ``pools`` when the start names them, else the
        function's ``placement.pools``, else every pool, by the backend's pool priorities.
        """
        resources = fn.spec.resources
        request = gpu_placement.GpuRequest(gpus=resources.gpus, gpu_memory_mb=resources.gpu_memory_mb)
        if request.empty or self.backend.places_gpus:
            return None, None  # no GPU asked, or the backend's scheduler places GPUs itself
        if not pools:
            pools = pools_by_priority(self.backend.pool_priorities, fn.spec.placement.pools)
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

    def _spawn(self, fn: FunctionRuntime, start: planner.Start,
               placement: gpu_placement.Placement | None = None) -> None:
        instance_id = f"{fn.name}-{fn.revision}-{secrets.token_hex(3)}"
        instance = Instance(
            id=instance_id, function=fn.name, revision=fn.revision,
            facts=InstanceFacts(started_at=self.clock.now()),
            provisioned=start.provisioned, placement=placement,
        )
        if placement is not None:
            self.placements[instance_id] = placement
        fn.instances[instance_id] = instance
        self.ledger.transition(instance.ledger_record(fn.spec), InstanceState.STARTING)
        fn.route.failure = None
        plan = InstancePlan(instance_id, fn.revision_plan, pools=start.pools, placement=placement)
        self._background(self._start(fn, instance, plan), f"start {instance_id}")

    async def _start(self, fn: FunctionRuntime, instance: Instance, plan: InstancePlan) -> None:
        spec, revision = fn.spec, fn.revision
        self._save(instance)
        try:
            instance.started = await self.backend.start(plan)
        except StartFailed as exc:
            await self._start_failed(fn, instance, str(exc), exc.log_tail)
            return
        except (BackendError, OSError) as exc:
            await self._start_failed(fn, instance, str(exc), "")
            return
        instance.facts.listening_at = self.clock.now()
        client = UpstreamClient(instance.started.address)
        try:
            instance.timings = await initialize(client, command=spec.runtime.command is not None,
                                                timeout_s=spec.initialize_timeout_s)
        except StartFailed as exc:
            await client.close()
            await self._start_failed(fn, instance, str(exc), self.backend.log_tail(instance.id))
            return
        except BaseException:
            await client.close()
            raise
        self._background(self._watch(fn, instance), f"watch {instance.id}")
        if instance.facts.draining_at is not None or fn.revision != revision or self._stopping:
            await client.close()
            await self._drain(fn, instance, "no longer needed")
            return
        instance.facts.ready_at = self.clock.now()
        instance.endpoint = Endpoint(instance.id, spec.concurrency, client,
                                     ready_at=instance.facts.ready_at,
                                     provisioned=instance.provisioned, idle=instance.facts)
        fn.failures, fn.backoff_until, fn.last_error = 0, 0.0, None
        fn.route.add_endpoint(instance.endpoint)
        self.ledger.transition(instance.ledger_record(spec), InstanceState.READY)
        self._save(instance)
        self.on_ready(instance)
        total = instance.cold_start()["total_s"]
        if isinstance(total, float):
            fn.cold_start_s = mean_cold_start(fn.cold_start_s, total)
        self._event(fn.name, "started", f"instance {instance.id} ready in {total:.3f}s")

    async def _start_failed(self, fn: FunctionRuntime, instance: Instance, reason: str,
                            log_tail: str) -> None:
        exit_ = await self.backend.stop(instance.id, STOP_GRACE_S)
        self._unplace(instance)
        reason = exit_.reason or reason  # e.g. killed for passing memory_mb during warmup
        message = f"instance {instance.id} of function {fn.name!r} failed to start: {reason}"
        if log_tail:
            message += f"\n--- last lines of its stderr ---\n{log_tail}"
        instance.facts.failure = reason
        instance.facts.exited_at = self.clock.now()
        instance.facts.exit_code = exit_.code
        self.ledger.transition(instance.ledger_record(fn.spec), None)
        self._save(instance)
        if fn.revision != instance.revision or self.functions.get(fn.name) is not fn:
            return
        fn.failures += 1
        # 1 s, 2 s, 4 s ... capped: a function that cannot start never spins.
        backoff_s = min(BACKOFF_BASE_S * 2 ** (fn.failures - 1), BACKOFF_MAX_S)
        fn.backoff_until = self.clock.now() + backoff_s
        fn.last_error = message
        self._event(fn.name, "start_failed", f"{message.splitlines()[0]} (retry in {backoff_s:g}s)")
        others = [i for i in fn.live() if i is not instance]
        if not others:
            error = ColdStartFailed(message, retry_after_s=backoff_s)
            fn.route.failure = error
            fn.route.fail_waiters(error)
        self._background(self._end_backoff(fn, backoff_s), f"backoff {fn.name}")

    async def _end_backoff(self, fn: FunctionRuntime, delay_s: float) -> None:
        """After the backoff, requests queue again (and so trigger the next attempt)."""
        await self.clock.sleep(delay_s)
        if self.clock.now() >= fn.backoff_until:
            fn.route.failure = None
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
        self.ledger.transition(instance.ledger_record(fn.spec), None)
        endpoint = instance.endpoint
        if endpoint is not None:
            fn.route.remove_endpoint(endpoint)
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
        if facts.draining_at is None:
            facts.draining_at = self.clock.now()
            if facts.exited_at is None:
                self.ledger.transition(instance.ledger_record(fn.spec), InstanceState.DRAINING)
                self._event(fn.name, "stopping", f"instance {instance.id}: {why}")
        if instance.endpoint is not None:
            fn.route.remove_endpoint(instance.endpoint)
            deadline = self.clock.now() + fn.spec.timeout_s
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
        if self._loop_task is not None:
            await self._loop_task
        for fn in self.functions.values():
            fn.route.fail_waiters(ColdStartFailed(f"torpor is shutting down; {fn.name!r} stopped"))
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
