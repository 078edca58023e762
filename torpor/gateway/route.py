"""One function's routing table: its endpoints, its bounded queue, and load accounting.

``acquire`` returns a :class:`Lease` for an endpoint with a free slot, waiting in FIFO order while none
has one (the activator role; while the autoscaler takes the queue out of the path, a request goes to
the least loaded endpoint and waits there, see :func:`choose_endpoint`); ``Lease.release``
(idempotent, always in a ``finally``) frees the slot and hands it straight to the oldest waiter. All
of this runs on the event loop with no locks and no I/O.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol

from torpor.clock import Clock
from torpor.errors import GatewayError, QueueFull, QueueTimeout
from torpor.gateway.request_stats import QUEUE_WAIT_BUCKETS_S, Histogram
from torpor.gateway.routing_policies import RoutingPolicy
from torpor.gateway.upstream import UpstreamResponse


class LoadObserver(Protocol):
    """Receives every change of the number of requests in the system (metrics for the autoscaler)."""

    def record(self, now: float, in_system: int) -> None: ...

    def record_request(self, now: float) -> None: ...


class InstanceClient(Protocol):
    """How the gateway and the reconciler talk to one instance, wherever it runs."""

    async def request(self, method: str, target: bytes, header_lines: bytes, body: bytes,
                      timeout_s: float) -> UpstreamResponse: ...

    async def control(self, path: str, timeout_s: float) -> tuple[int, str]: ...

    async def close(self) -> None: ...


class IdleFacts(Protocol):
    """Idle mode's facts about an instance (kept by the lifecycle; the one source of freeze state)."""

    freeze_requested_at: float | None  # routing stopped for a freeze; cleared when thawed
    thaw_requested_at: float | None  # a thaw is under way
    failure: str | None  # why the instance ended, once known (e.g. out of memory)


class Endpoint:
    """A READY instance as the gateway sees it. ``client`` forwards requests to it.

    ``open`` is the gateway's own flag (False once removed or found unreachable); whether idle
    mode holds the instance comes from its facts (``idle``), so ``accepting`` — may a request be
    routed here — is derived, never set.
    """

    __slots__ = ("capacity", "client", "first_response_at", "idle", "idle_since", "in_flight",
                 "instance_id", "open", "provisioned", "ready_at", "thawed_at")

    def __init__(
        self,
        instance_id: str,
        capacity: int,
        client: InstanceClient,
        *,
        ready_at: float,
        provisioned: bool = False,
        idle: IdleFacts | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.capacity = capacity
        self.client = client
        self.ready_at = ready_at
        self.provisioned = provisioned
        self.idle = idle
        self.in_flight = 0
        self.open = True
        self.first_response_at: float | None = None
        self.thawed_at = 0.0
        self.idle_since = ready_at  # when in_flight last dropped to 0

    @property
    def frozen(self) -> bool:
        """Held by idle mode: freezing, frozen or thawing (takes no request until thawed)."""
        idle = self.idle
        return idle is not None and idle.freeze_requested_at is not None

    @property
    def thawing(self) -> bool:
        idle = self.idle
        return idle is not None and idle.thaw_requested_at is not None

    @property
    def accepting(self) -> bool:
        idle = self.idle
        return self.open and (idle is None or idle.freeze_requested_at is None)


class Lease:
    """A slot on one endpoint; release it exactly once (extra releases are ignored)."""

    __slots__ = ("_released", "endpoint", "route")

    def __init__(self, route: FunctionRoute, endpoint: Endpoint) -> None:
        self.route = route
        self.endpoint = endpoint
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.route._release(self.endpoint)


class FunctionRoute:
    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        max_queued: int,
        queue_timeout_s: float,
        timeout_s: float,
        policy: RoutingPolicy | None = None,
        on_demand: Callable[[], None] = lambda: None,
        observer: LoadObserver | None = None,
        thaw: Callable[[Endpoint], None] = lambda endpoint: None,
        revision: int = 0,
        on_idle: Callable[[Endpoint], None] = lambda endpoint: None,
    ) -> None:
        self.name = name
        self.revision = revision
        self.revision_header = str(revision).encode()  # x-torpor-revision, encoded once
        self.clock = clock
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.timeout_s = timeout_s
        self.policy = policy or RoutingPolicy.make()
        self.on_demand = on_demand
        self.observer = observer
        self.thaw = thaw
        # an endpoint has nothing in flight (from ``idle_since``): the reconciler times the end of
        # its keep-alive from here, not from its next pass
        self.on_idle = on_idle
        self.endpoints: list[Endpoint] = []
        self.in_flight = 0
        self.last_request_at: float | None = None
        self.requests = 0  # received, for /metrics
        self.errors = 0  # answered with a 5xx (by the instance or the gateway), for rollouts
        self.queue_wait = Histogram(QUEUE_WAIT_BUCKETS_S)  # requests that had to wait, for /metrics
        # Set while the function cannot start an instance (failed cold start, in backoff):
        # new requests fail fast with it instead of waiting for a queue timeout.
        self.failure: GatewayError | None = None
        # The autoscaler's choice (Knative's activator in the path): while False and no endpoint
        # has a free slot, a request goes to the least loaded endpoint and waits there instead.
        self.activator_in_path = True
        self._waiters: deque[asyncio.Future[Endpoint]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def pick(self, tag: str) -> FunctionRoute | None:
        """A function with one route is its own route table (see ``gateway.traffic``)."""
        return None if tag else self

    @property
    def in_system(self) -> int:
        return self.in_flight + len(self._waiters)

    async def acquire(self) -> Lease:
        now = self.clock.now()
        self.last_request_at = now
        self.requests += 1
        if self.observer is not None:
            self.observer.record_request(now)
        endpoint = choose_endpoint(self.policy, self.endpoints, self.activator_in_path)
        if endpoint is not None:
            self._take(endpoint)
            return Lease(self, endpoint)
        if self.failure is not None:
            failure = self.failure
            raise type(failure)(failure.message, retry_after_s=failure.retry_after_s)
        if len(self._waiters) >= self.max_queued:
            self.on_demand()  # with max_queued 0 this is the only sign of demand at zero instances
            raise QueueFull(
                f"function {self.name!r} has {len(self._waiters)} requests queued, "
                f"the limit of queue.max_queued",
                retry_after_s=1,
            )
        return Lease(self, await self._wait())

    async def _wait(self) -> Endpoint:
        waiter: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._changed()
        self._thaw_for_waiters()
        self.on_demand()
        queued_at = self.clock.now()
        try:
            await asyncio.wait((waiter,), timeout=self.queue_timeout_s)
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            self.queue_wait.observe(self.clock.now() - queued_at)
        if not waiter.done():
            self._abandon(waiter)
            raise QueueTimeout(
                f"function {self.name!r} had no free instance within "
                f"queue.timeout_s={self.queue_timeout_s:g}s"
            )
        return waiter.result()

    def _abandon(self, waiter: asyncio.Future[Endpoint]) -> None:
        if waiter.done():
            if not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())  # a slot was handed over just as we gave up
            return
        waiter.cancel()
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass
        self._changed()

    def _thaw_for_waiters(self) -> None:
        """Ask for as many frozen endpoints to be thawed as the queue needs (provisioned first)."""
        thawing = sum(e.capacity for e in self.endpoints if e.thawing)
        for endpoint in sorted(self.endpoints, key=lambda e: not e.provisioned):
            if thawing >= len(self._waiters):
                return
            if endpoint.frozen and not endpoint.thawing:
                thawing += endpoint.capacity
                self.thaw(endpoint)  # records the thaw request in the instance's facts

    def _take(self, endpoint: Endpoint) -> None:
        endpoint.in_flight += 1
        self.in_flight += 1
        self._changed()

    def _release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1
        self.in_flight -= 1
        if endpoint.in_flight == 0:
            endpoint.idle_since = self.clock.now()
        if self._waiters:
            self.dispatch()
        else:
            self._changed()
        self.went_idle(endpoint)

    def went_idle(self, endpoint: Endpoint) -> None:
        """Tell ``on_idle`` when ``endpoint`` (released, just ready or thawed) has nothing in flight
        and still takes requests."""
        if endpoint.in_flight == 0 and endpoint.open:
            self.on_idle(endpoint)

    def _changed(self) -> None:
        if self.observer is not None:
            self.observer.record(self.clock.now(), self.in_flight + len(self._waiters))

    def dispatch(self) -> None:
        """Hand free slots to waiters, oldest first."""
        while self._waiters:
            endpoint = self.policy.choose(self.endpoints)
            if endpoint is None:
                break
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            endpoint.in_flight += 1
            self.in_flight += 1
            waiter.set_result(endpoint)
        self._changed()

    def add_endpoint(self, endpoint: Endpoint) -> None:
        self.endpoints.append(endpoint)
        self.failure = None
        self.dispatch()
        self.went_idle(endpoint)

    def remove_endpoint(self, endpoint: Endpoint) -> None:
        endpoint.open = False
        if endpoint in self.endpoints:
            self.endpoints.remove(endpoint)

    def fail_waiters(self, error: GatewayError) -> None:
        """Answer every queued request with ``error`` (e.g. a cold start that failed)."""
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._changed()


def choose_endpoint(policy: RoutingPolicy, endpoints: list[Endpoint],
                    activator_in_path: bool) -> Endpoint | None:
    """Where a new request goes: an endpoint with a free slot by the routing policy; with none free
    and the gateway queue out of the path (Knative's serve mode), the accepting endpoint with the
    fewest requests in flight, full or not, where it waits; else None (it queues here). The
    simulator routes with this too."""
    endpoint = policy.choose(endpoints)
    if endpoint is None and not activator_in_path:
        accepting = [e for e in endpoints if e.accepting]
        endpoint = min(accepting, key=lambda e: e.in_flight) if accepting else None
    return endpoint
