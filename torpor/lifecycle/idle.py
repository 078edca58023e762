"""Idle mode (seed 000): provisioned instances freeze when idle and thaw on the next request.

Freeze: stop routing to the instance (synchronously, only when nothing is in flight), call its
``/_torpor/freeze`` (``Model.on_freeze``: e.g. move weights off the GPU), then freeze its processes.
Thaw: unfreeze, call ``/_torpor/thaw`` (``Model.on_thaw``), route to it again. A thaw asked for while
the freeze is still under way waits for it: a request that arrives mid-freeze waits, never fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from torpor.backend.freezer import Freezer
from torpor.clock import Clock
from torpor.gateway.route import Endpoint
from torpor.gateway.upstream import UpstreamClient
from torpor.lifecycle.instance import FunctionRuntime, Instance
from torpor.lifecycle.state import InstanceState
from torpor.metering.ledger import Ledger

log = logging.getLogger(__name__)

HOOK_TIMEOUT_S = 30.0


class IdleMode:
    def __init__(self, freezer: Freezer, clock: Clock, ledger: Ledger,
                 background: Callable[[Coroutine[Any, Any, None], str], None]) -> None:
        self.freezer = freezer
        self.clock = clock
        self.ledger = ledger
        self._background = background
        self._transitions: dict[str, asyncio.Task[None]] = {}
        self.on_thawed: Callable[[Instance, float], None] = lambda instance, seconds: None

    def attach(self, fn: FunctionRuntime, instance: Instance) -> None:
        """Put a new instance's process under the freezer (before it can start children)."""
        if fn.spec.scaling.idle_mode and instance.handle is not None:
            try:
                self.freezer.attach(instance.id, instance.handle.pid)
            except OSError as exc:
                log.warning("cannot attach %s to the freezer: %s", instance.id, exc)

    def release(self, instance: Instance) -> None:
        self.freezer.release(instance.id)

    def freeze_idle(self, fn: FunctionRuntime, now: float) -> None:
        """Freeze provisioned instances idle for at least idle_after_s."""
        if not fn.spec.scaling.idle_mode:
            return
        for instance in fn.live():
            endpoint = instance.endpoint
            if (
                instance.provisioned
                and endpoint is not None
                and instance.state == InstanceState.READY
                and not endpoint.frozen
                and endpoint.in_flight == 0
                and now - endpoint.idle_since >= fn.spec.scaling.idle_after_s
                and instance.id not in self._transitions
            ):
                endpoint.frozen = True
                endpoint.accepting = False  # from here no request is routed to it
                self._run(instance, self._freeze(fn, instance, endpoint))

    def thaw(self, fn: FunctionRuntime, endpoint: Endpoint) -> None:
        """The route needs this frozen endpoint (a request is waiting)."""
        instance = fn.instances.get(endpoint.instance_id)
        if instance is None:
            endpoint.thawing = False
            return
        previous = self._transitions.get(instance.id)
        self._run(instance, self._thaw(fn, instance, endpoint, previous))

    async def thaw_before_stop(self, instance: Instance) -> None:
        """A frozen process cannot act on SIGTERM: thaw it first."""
        previous = self._transitions.get(instance.id)
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        if instance.facts.frozen_at is not None and instance.handle is not None:
            await self.freezer.thaw(instance.id, instance.handle.pid)

    def _run(self, instance: Instance, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._transitions[instance.id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._transitions.get(instance.id) is task:
                del self._transitions[instance.id]

        task.add_done_callback(done)
        self._background(_quiet(task), f"idle {instance.id}")

    async def _freeze(self, fn: FunctionRuntime, instance: Instance, endpoint: Endpoint) -> None:
        assert instance.handle is not None
        try:
            await _hook(endpoint, "freeze")
            await self.freezer.freeze(instance.id, instance.handle.pid)
        except Exception as exc:
            log.warning("could not freeze %s: %s", instance.id, exc)
            endpoint.frozen = False
            if not endpoint.thawing:
                endpoint.accepting = True
                fn.route.dispatch()
            return
        instance.facts.frozen_at = self.clock.now()
        self.ledger.transition(instance, fn.spec, InstanceState.FROZEN)

    async def _thaw(self, fn: FunctionRuntime, instance: Instance, endpoint: Endpoint,
                    previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        began = self.clock.now()
        was_frozen = instance.facts.frozen_at is not None
        try:
            if instance.facts.frozen_at is not None and instance.handle is not None:
                await self.freezer.thaw(instance.id, instance.handle.pid)
                await _hook(endpoint, "thaw")
        except Exception as exc:
            log.error("could not thaw %s: %s", instance.id, exc)
        if instance.facts.frozen_at is not None:
            instance.facts.frozen_at = None
            self.ledger.transition(instance, fn.spec, InstanceState.READY)
        now = self.clock.now()
        endpoint.thawed_at = now
        endpoint.idle_since = now
        endpoint.frozen = False
        endpoint.thawing = False
        endpoint.accepting = instance.facts.draining_at is None
        fn.route.dispatch()
        if was_frozen:
            self.on_thawed(instance, now - began)


async def _hook(endpoint: Endpoint, which: str) -> None:
    client = endpoint.client
    assert isinstance(client, UpstreamClient)
    async with client.session.post(
        f"{client.base}/_torpor/{which}", data=b"",
        timeout=aiohttp.ClientTimeout(total=HOOK_TIMEOUT_S),
    ) as response:
        if response.status == 404:
            return  # a command function without the hook
        if response.status >= 400:
            raise RuntimeError(f"/_torpor/{which} answered {response.status}: "
                               f"{(await response.text())[:500]}")


async def _quiet(task: asyncio.Task[None]) -> None:
    await asyncio.gather(task, return_exceptions=True)
