"""Idle mode (seed 000): provisioned instances freeze when idle and thaw on the next request.

The freeze state lives in one place, the instance's facts: ``freeze_requested_at`` (routing stopped),
``frozen_at`` (frozen), ``thaw_requested_at`` (a thaw under way); the gateway's endpoint derives
``frozen``/``thawing``/``accepting`` from them.

Freeze: record ``freeze_requested_at`` (synchronously, only when nothing is in flight: from then on
no request is routed to it), call its ``/_torpor/freeze`` (``Model.on_freeze``: e.g. move weights off
the GPU), then have the backend freeze it. Thaw: the backend thaws it, ``/_torpor/thaw``
(``Model.on_thaw``), route to it again. A thaw asked for while the freeze is still under way waits
for it: a request that arrives mid-freeze waits, never fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from torpor.backends import InstanceBackend
from torpor.clock import Clock
from torpor.gateway.route import Endpoint, InstanceClient
from torpor.lifecycle.instance import FunctionRuntime, Instance
from torpor.lifecycle.state import InstanceState
from torpor.metering.ledger import Ledger

log = logging.getLogger(__name__)

HOOK_TIMEOUT_S = 30.0


class IdleMode:
    def __init__(self, backend: InstanceBackend, clock: Clock, ledger: Ledger,
                 background: Callable[[Coroutine[Any, Any, None], str], None]) -> None:
        self.backend = backend
        self.clock = clock
        self.ledger = ledger
        self._background = background
        self._transitions: dict[str, asyncio.Task[None]] = {}
        self.on_thawed: Callable[[Instance, float], None] = lambda instance, seconds: None

    def in_transition(self, instance: Instance) -> bool:
        return instance.id in self._transitions

    def freeze(self, fn: FunctionRuntime, instance: Instance) -> None:
        """Take an idle instance out of routing and freeze it (the planner chose it)."""
        endpoint = instance.endpoint
        if endpoint is None or endpoint.in_flight > 0 or instance.facts.freeze_requested_at is not None:
            return
        instance.facts.freeze_requested_at = self.clock.now()  # from here no request is routed to it
        self._run(instance, self._freeze(fn, instance, endpoint))

    def thaw(self, fn: FunctionRuntime, endpoint: Endpoint) -> None:
        """The route needs this frozen endpoint (a request is waiting)."""
        instance = fn.instances.get(endpoint.instance_id)
        if instance is None or instance.facts.thaw_requested_at is not None:
            return
        instance.facts.thaw_requested_at = self.clock.now()
        previous = self._transitions.get(instance.id)
        self._run(instance, self._thaw(fn, instance, endpoint, previous))

    async def settle(self, instance: Instance) -> None:
        """Wait for a freeze or thaw under way (before stopping the instance)."""
        previous = self._transitions.get(instance.id)
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)

    def _run(self, instance: Instance, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._transitions[instance.id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._transitions.get(instance.id) is task:
                del self._transitions[instance.id]

        task.add_done_callback(done)
        self._background(_quiet(task), f"idle {instance.id}")

    async def _freeze(self, fn: FunctionRuntime, instance: Instance, endpoint: Endpoint) -> None:
        try:
            await _hook(endpoint.client, "freeze")
            await self.backend.freeze(instance.id)
        except Exception as exc:
            log.warning("could not freeze %s: %s", instance.id, exc)
            if instance.facts.thaw_requested_at is None:
                instance.facts.freeze_requested_at = None  # routable again
                fn.revision_of(instance).route.dispatch()
            return
        instance.facts.frozen_at = self.clock.now()
        self.ledger.transition(instance.ledger_record(fn.revision_of(instance).spec), InstanceState.FROZEN)

    async def _thaw(self, fn: FunctionRuntime, instance: Instance, endpoint: Endpoint,
                    previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        began = self.clock.now()
        was_frozen = instance.facts.frozen_at is not None
        try:
            if instance.facts.frozen_at is not None:
                await self.backend.thaw(instance.id)
                await _hook(endpoint.client, "thaw")
        except Exception as exc:
            log.error("could not thaw %s: %s", instance.id, exc)
        facts = instance.facts
        if facts.frozen_at is not None:
            facts.frozen_at = None
            self.ledger.transition(instance.ledger_record(fn.revision_of(instance).spec), InstanceState.READY)
        now = self.clock.now()
        endpoint.thawed_at = now
        endpoint.idle_since = now
        facts.freeze_requested_at = None
        facts.thaw_requested_at = None
        route = fn.revision_of(instance).route
        route.dispatch()
        route.went_idle(endpoint)
        if was_frozen:
            self.on_thawed(instance, now - began)


async def _hook(client: InstanceClient, which: str) -> None:
    status, body = await client.control(f"/_torpor/{which}", HOOK_TIMEOUT_S)
    if status == 404:
        return  # a command function without the hook
    if status >= 400:
        raise RuntimeError(f"/_torpor/{which} answered {status}: {body[:500]}")


async def _quiet(task: asyncio.Task[None]) -> None:
    await asyncio.gather(task, return_exceptions=True)
