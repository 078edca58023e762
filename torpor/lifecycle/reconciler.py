"""The reconciler: the only code with side effects on instances.

It keeps each function's live instances at the count the autoscaler decides, starts instances (cold
start with exponential backoff after failures), drains and stops surplus or outdated ones, notices
crashes at once, and records every fact in the store off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torpor.autoscaling import autoscaler
from torpor.autoscaling.keepalive import KeepAliveConfig, mean_cold_start
from torpor.autoscaling.scaling_policies import PolicyState, ProvisionConfig
from torpor.backend.freezer import Freezer, SignalFreezer
from torpor.backend.local import LocalBackend, tail
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
from torpor.lifecycle import launcher
from torpor.lifecycle.idle import IdleMode
from torpor.lifecycle.instance import FunctionRuntime, Instance
from torpor.lifecycle.state import InstanceFacts, InstanceState
from torpor.lifecycle.templates import Templates
from torpor.metering.ledger import Ledger
from torpor.spec import FunctionSpec
from torpor.store import Store

log = logging.getLogger(__name__)

_SERVING = frozenset({InstanceState.READY, InstanceState.BUSY, InstanceState.FROZEN})


class Reconciler:
    def __init__(self, store: Store, clock: Clock, data_dir: Path, backend: LocalBackend,
                 templates: bool = False, freezer: Freezer | None = None) -> None:
        self.store = store
        self.clock = clock
        self.data_dir = data_dir
        self.backend = backend
        self.functions: dict[str, FunctionRuntime] = {}
        self.routes: dict[str, FunctionRoute] = {}  # what the gateway reads
        self.run_dir = _socket_dir(data_dir)
        self.templates = Templates(backend, data_dir, self.run_dir) if templates else None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_ready: Callable[[Instance], None] = lambda instance: None
        self.ledger = Ledger(store, clock)
        self.idle = IdleMode(freezer or SignalFreezer(), clock, self.ledger, self._background)
        self._last_heartbeat = 0.0

    # deploy / delete ---------------------------------------------------------------------------

    def apply(self, spec: FunctionSpec, revision: int, base_dir: Path, source: str,
              created_at: float, updated_at: float,
              provision: ProvisionConfig | None = None,
              model_path: Path | None = None) -> FunctionRuntime:
        """Install (or replace) a function's spec. Old instances keep serving until replaced.

        ``provision`` is a provisioning config set through the API; without one the spec's
        ``scaling.provisioned`` is the static target.
        """
        existing = self.functions.get(spec.name)
        if existing is not None:
            route = existing.route
            route.max_queued = spec.queue.max_queued
            route.queue_timeout_s = spec.queue.timeout_s
            route.timeout_s = spec.timeout_s
            route.policy = RoutingPolicy.make(spec.routing.policy)
            route.failure = None
            existing.spec, existing.revision, existing.base_dir = spec, revision, base_dir
            existing.source, existing.updated_at = source, updated_at
            existing.model_path = model_path
            existing.failures, existing.backoff_until, existing.last_error = 0, 0.0, None
            existing.provision = provision or ProvisionConfig(target=spec.scaling.provisioned)
            existing.next_decision_at = 0.0
            self._prepare_template(existing)
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
        fn = FunctionRuntime(spec=spec, revision=revision, base_dir=base_dir, source=source,
                             route=route, created_at=created_at, updated_at=updated_at,
                             provision=provision or ProvisionConfig(target=spec.scaling.provisioned),
                             model_path=model_path)
        route.observer = fn.recorder
        route.thaw = lambda endpoint: self.idle.thaw(fn, endpoint)
        self.functions[spec.name] = fn
        self.routes[spec.name] = route
        self._prepare_template(fn)
        self.poke()
        return fn

    def uses_template(self, fn: FunctionRuntime) -> bool:
        runtime = fn.spec.runtime
        return self.templates is not None and runtime.handler is not None and runtime.templates

    def _prepare_template(self, fn: FunctionRuntime) -> None:
        """Build the revision's template at deploy, so the first cold start only forks."""
        if self.templates is None:
            return
        if self.uses_template(fn):
            self.templates.ensure(fn.spec, fn.revision, fn.base_dir, fn.model_path)
        else:
            self.templates.retire(fn.name)

    async def remove(self, name: str) -> None:
        """Stop routing to a function, answer its queue, drain and stop its instances."""
        fn = self.functions.pop(name)
        self.routes.pop(name, None)
        if self.templates is not None:
            self.templates.retire(name)
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
        live = fn.live()
        # Decide every tick_s, and at once while requests wait (e.g. a request at zero instances).
        if now >= fn.next_decision_at or fn.route.queued > 0:
            self._decide(fn, live, now)
        desired = fn.decision.desired
        self._mark_provisioned(fn, live, fn.decision.provisioned)
        if len(live) < desired:
            if now < fn.backoff_until:
                return
            provisioned = sum(1 for i in live if i.provisioned)
            for n in range(desired - len(live)):
                self._spawn(fn, provisioned=provisioned + n < fn.decision.provisioned)
        elif len(live) > desired:
            idle = [i for i in live if i.state in (InstanceState.READY, InstanceState.FROZEN)]
            idle.sort(key=lambda i: (i.provisioned, -(i.facts.ready_at or 0)))
            for instance in idle[: len(live) - desired]:
                self._drain_soon(fn, instance, "scale in")
        self.idle.freeze_idle(fn, now)
        # Instances of an older revision go once the current one serves (or nothing is needed).
        serving = any(i.state in (InstanceState.READY, InstanceState.BUSY) for i in live)
        if serving or desired == 0:
            for instance in fn.live(current_only=False):
                if instance.revision != fn.revision:
                    self._drain_soon(fn, instance, f"replaced by revision {fn.revision}")

    def _decide(self, fn: FunctionRuntime, live: list[Instance], now: float) -> None:
        ready = sum(1 for i in live if i.state in _SERVING)
        decision, fn.autoscaler = autoscaler.decide(
            fn.kpa_config, fn.provision, fn.recorder,
            concurrency=fn.spec.concurrency, ready=ready,
            current_provisioned=sum(1 for i in live if i.provisioned),
            now=now, state=fn.autoscaler,
            keep_alive=KeepAliveConfig.from_spec(fn.spec.scaling, fn.spec.concurrency),
            cold_start_s=fn.cold_start_s,
        )
        fn.next_decision_at = now + fn.spec.scaling.tick_s
        if decision.desired != fn.decision.desired:
            self._event(fn.name, "scaled",
                        f"{fn.name} {fn.decision.desired}→{decision.desired}: {decision.reason}")
        fn.decision = decision
        fn.route.activator_in_path = decision.activator_in_path

    @staticmethod
    def _mark_provisioned(fn: FunctionRuntime, live: list[Instance], count: int) -> None:
        """The oldest ``count`` live instances are the provisioned ones (routed to first)."""
        for n, instance in enumerate(sorted(live, key=lambda i: i.facts.started_at)):
            instance.provisioned = n < count
            if instance.endpoint is not None:
                instance.endpoint.provisioned = instance.provisioned

    # starting ----------------------------------------------------------------------------------

    def _spawn(self, fn: FunctionRuntime, provisioned: bool = False) -> None:
        instance_id = f"{fn.name}-{fn.revision}-{secrets.token_hex(3)}"
        logs = self.data_dir / "logs" / fn.name
        instance = Instance(
            id=instance_id, function=fn.name, revision=fn.revision,
            facts=InstanceFacts(started_at=self.clock.now()),
            stdout_path=logs / f"{instance_id}.stdout.log",
            stderr_path=logs / f"{instance_id}.stderr.log",
            provisioned=provisioned,
        )
        fn.instances[instance_id] = instance
        self.ledger.transition(instance, fn.spec, InstanceState.STARTING)
        fn.route.failure = None
        self._background(self._start(fn, instance), f"start {instance_id}")

    async def _start(self, fn: FunctionRuntime, instance: Instance) -> None:
        spec, revision = fn.spec, fn.revision
        socket_path = str(self.run_dir / f"{instance.id}.sock")
        self._save(instance)
        try:
            client = await launcher.start(
                self.backend, self.clock, spec, fn.base_dir, instance, socket_path,
                self.templates if self.uses_template(fn) else None, fn.model_path,
                on_process=lambda: self.idle.attach(fn, instance),
            )
        except (launcher.StartFailed, OSError) as exc:
            await self._start_failed(fn, instance, str(exc), getattr(exc, "stderr_path", None))
            return
        if instance.handle is not None:
            self._background(self._watch(fn, instance), f"watch {instance.id}")
        if instance.facts.draining_at is not None or fn.revision != revision or self._stopping:
            await client.close()
            await self._drain(fn, instance, "no longer needed")
            return
        instance.facts.ready_at = self.clock.now()
        instance.endpoint = Endpoint(instance.id, spec.concurrency, client,
                                     ready_at=instance.facts.ready_at,
                                     provisioned=instance.provisioned)
        fn.failures, fn.backoff_until, fn.last_error = 0, 0.0, None
        fn.route.add_endpoint(instance.endpoint)
        self.ledger.transition(instance, spec, InstanceState.READY)
        self._save(instance)
        self.on_ready(instance)
        total = instance.cold_start()["total_s"]
        if isinstance(total, float):
            fn.cold_start_s = mean_cold_start(fn.cold_start_s, total)
        self._event(fn.name, "started", f"instance {instance.id} ready in {total:.3f}s")

    async def _start_failed(self, fn: FunctionRuntime, instance: Instance, reason: str,
                            stderr_path: Path | None = None) -> None:
        if instance.handle is not None:
            await self.backend.stop(instance.handle, STOP_GRACE_S)
        stderr = tail(stderr_path or instance.stderr_path)
        message = f"instance {instance.id} of function {fn.name!r} failed to start: {reason}"
        if stderr:
            message += f"\n--- last lines of its stderr ---\n{stderr}"
        instance.facts.failure = reason
        instance.facts.exited_at = self.clock.now()
        instance.facts.exit_code = instance.handle.returncode if instance.handle else None
        self.ledger.transition(instance, fn.spec, None)
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
        assert instance.handle is not None
        code = await instance.handle.wait()
        instance.facts.exited_at = self.clock.now()
        instance.facts.exit_code = code
        self.ledger.transition(instance, fn.spec, None)
        self.idle.release(instance)
        endpoint = instance.endpoint
        if endpoint is not None:
            fn.route.remove_endpoint(endpoint)
        if instance.facts.draining_at is None and not self._stopping:
            self._event(fn.name, "crashed", f"instance {instance.id} exited with code {code}")
            stderr = tail(instance.stderr_path, max_lines=5)
            log.warning("instance %s exited with code %s\n%s", instance.id, code, stderr)
        self._save(instance)
        if endpoint is not None:
            while endpoint.in_flight > 0:  # let the gateway answer its requests first (502)
                await asyncio.sleep(DRAIN_POLL_S)
            client = endpoint.client
            assert isinstance(client, UpstreamClient)
            await client.close()
        fn.instances.pop(instance.id, None)
        self.poke()

    def _drain_soon(self, fn: FunctionRuntime, instance: Instance, why: str) -> None:
        if instance.facts.draining_at is None:
            self._background(self._drain(fn, instance, why), f"drain {instance.id}")

    async def _drain(self, fn: FunctionRuntime, instance: Instance, why: str) -> None:
        """No new requests; stop the process once its in-flight requests are answered."""
        if instance.facts.draining_at is None:
            instance.facts.draining_at = self.clock.now()
            if instance.facts.exited_at is None:
                self.ledger.transition(instance, fn.spec, InstanceState.DRAINING)
            self._event(fn.name, "stopping", f"instance {instance.id}: {why}")
        if instance.endpoint is not None:
            fn.route.remove_endpoint(instance.endpoint)
            deadline = self.clock.now() + fn.spec.timeout_s
            while instance.endpoint.in_flight > 0 and self.clock.now() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
        self._save(instance)
        if instance.handle is not None and instance.handle.returncode is None:
            await self.idle.thaw_before_stop(instance)
            await self.backend.stop(instance.handle, STOP_GRACE_S)

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
                               if i.handle is not None), return_exceptions=True)
        if self.templates is not None:
            await self.templates.shutdown()
        for task in list(self._tasks):
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, instance in everything:
            if instance.endpoint is not None:
                client = instance.endpoint.client
                assert isinstance(client, UpstreamClient)
                await client.close()
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


def _socket_dir(data_dir: Path) -> Path:
    """Unix socket paths are limited to ~107 bytes; deep data dirs get a short twin in /tmp."""
    run_dir = data_dir / "run"
    if len(str(run_dir)) > 60:
        digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
        run_dir = Path(tempfile.gettempdir()) / f"torpor-{digest}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir

