"""FunctionRoute: leases, the bounded FIFO queue, hand-off on release, and load accounting that cannot leak.

Every route built by ``make_route`` is checked when its test ends: nothing in flight, nothing queued,
every endpoint back to 0. Queue timeouts are real (asyncio) but 0.05 s; the clock is a FakeClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from torpor.clock import FakeClock
from torpor.errors import ColdStartFailed, QueueFull, QueueTimeout
from torpor.gateway.route import Endpoint, FunctionRoute, Lease

SHORT_TIMEOUT_S = 0.05


class Recorder:
    """An observer that keeps every call."""

    def __init__(self) -> None:
        self.records: list[tuple[float, int]] = []
        self.requests: list[float] = []

    def record(self, now: float, in_system: int) -> None:
        self.records.append((now, in_system))

    def record_request(self, now: float) -> None:
        self.requests.append(now)


MakeRoute = Callable[..., FunctionRoute]


@pytest.fixture
def make_route() -> Iterator[MakeRoute]:
    """Build a route named 'echo' with one endpoint per capacity given; check its books at the end."""
    routes: list[FunctionRoute] = []

    def make(*capacities: int, max_queued: int = 10, queue_timeout_s: float = 5.0,
             **kwargs: Any) -> FunctionRoute:
        route = FunctionRoute("echo", clock=FakeClock(100.0), max_queued=max_queued,
                              queue_timeout_s=queue_timeout_s, timeout_s=60.0, **kwargs)
        for i, capacity in enumerate(capacities):
            route.add_endpoint(make_endpoint(f"i{i}", capacity))
        routes.append(route)
        return route

    yield make
    for route in routes:
        assert (route.in_flight, route.queued, route.in_system) == (0, 0, 0), "route load leaked"
        assert [e.in_flight for e in route.endpoints] == [0] * len(route.endpoints), "slot leaked"


def make_endpoint(instance_id: str, capacity: int = 1, *, provisioned: bool = False) -> Endpoint:
    return Endpoint(instance_id, capacity, client=None, ready_at=0.0, provisioned=provisioned)


async def queue_acquire(route: FunctionRoute) -> asyncio.Task[Lease]:
    """Start an acquire and let it run until it is waiting in the queue."""
    task = asyncio.create_task(route.acquire())
    await asyncio.sleep(0)
    return task


class TestAcquire:
    async def test_immediate_when_slot_free(self, make_route: MakeRoute) -> None:
        """A free slot is leased at once, counted on the route and the endpoint, and freed on release."""
        route = make_route(2)
        lease = await route.acquire()
        assert (lease.endpoint.instance_id, lease.endpoint.in_flight, route.in_flight) == ("i0", 1, 1)
        assert (route.queued, route.in_system) == (0, 1)
        lease.release()
        assert (lease.endpoint.in_flight, route.in_flight, route.in_system) == (0, 0, 0)

    async def test_uses_the_routing_policy(self, make_route: MakeRoute) -> None:
        """With the default policy the second request goes to the idle endpoint."""
        route = make_route(2, 2)
        first, second = await route.acquire(), await route.acquire()
        assert (first.endpoint.instance_id, second.endpoint.instance_id) == ("i0", "i1")
        first.release()
        second.release()

    async def test_records_last_request_time(self, make_route: MakeRoute) -> None:
        """Every acquire stamps last_request_at with the clock's time (for the scale-to-zero grace)."""
        route = make_route(1)
        assert route.last_request_at is None
        lease = await route.acquire()
        assert route.last_request_at == 100.0
        lease.release()


class TestQueueFull:
    async def test_full_queue_rejected(self, make_route: MakeRoute) -> None:
        """Past queue.max_queued a request is refused with 503 and a Retry-After hint."""
        route = make_route(1, max_queued=1)
        held = await route.acquire()
        waiter = await queue_acquire(route)
        with pytest.raises(QueueFull) as excinfo:
            await route.acquire()
        error = excinfo.value
        assert (error.status, error.reason, error.retry_after_s) == (503, "queue_full", 1)
        assert error.message == "function 'echo' has 1 requests queued, the limit of queue.max_queued"
        assert (route.queued, route.in_flight) == (1, 1)
        held.release()
        (await waiter).release()

    async def test_zero_queue_rejects_when_busy(self, make_route: MakeRoute) -> None:
        """max_queued 0 means no waiting at all: busy means refused."""
        route = make_route(1, max_queued=0)
        held = await route.acquire()
        with pytest.raises(QueueFull) as excinfo:
            await route.acquire()
        assert excinfo.value.message == "function 'echo' has 0 requests queued, the limit of queue.max_queued"
        held.release()


class TestQueueTimeout:
    async def test_timeout_raises_and_leaves_queue(self, make_route: MakeRoute) -> None:
        """Waiting past queue.timeout_s is a 504, and the waiter is gone from the queue."""
        route = make_route(1, queue_timeout_s=SHORT_TIMEOUT_S)
        held = await route.acquire()
        with pytest.raises(QueueTimeout) as excinfo:
            await route.acquire()
        error = excinfo.value
        assert (error.status, error.reason) == (504, "queue_timeout")
        assert error.message == "function 'echo' had no free instance within queue.timeout_s=0.05s"
        assert (route.queued, route.in_flight, route.in_system) == (0, 1, 1)
        held.release()
        assert held.endpoint.in_flight == 0  # the slot is not handed to the timed-out waiter

    async def test_timeout_with_no_instances(self, make_route: MakeRoute) -> None:
        """A function with no endpoint at all times out the same way."""
        route = make_route(queue_timeout_s=SHORT_TIMEOUT_S)
        with pytest.raises(QueueTimeout):
            await route.acquire()
        assert route.queued == 0


class TestHandOff:
    async def test_fifo_order(self, make_route: MakeRoute) -> None:
        """Three waiters get the one slot in arrival order as each lease is released."""
        route = make_route(1)
        held = await route.acquire()
        order: list[str] = []

        async def request(name: str) -> Lease:
            lease = await route.acquire()
            order.append(name)
            return lease

        tasks = {}
        for name in "abc":
            tasks[name] = asyncio.create_task(request(name))
            await asyncio.sleep(0)
        assert route.queued == 3
        held.release()
        lease = await tasks["a"]
        for name in "bc":
            assert order[-1] != name
            lease.release()
            lease = await tasks[name]
        lease.release()
        assert order == ["a", "b", "c"]

    async def test_release_hands_slot_directly(self, make_route: MakeRoute) -> None:
        """Release gives the slot straight to the oldest waiter: it stays taken, the queue shrinks."""
        route = make_route(1)
        held = await route.acquire()
        waiter = await queue_acquire(route)
        held.release()
        assert (held.endpoint.in_flight, route.in_flight, route.queued) == (1, 1, 0)
        (await waiter).release()

    async def test_newcomer_cannot_take_a_handed_off_slot(self, make_route: MakeRoute) -> None:
        """A request arriving after a release queues behind, instead of stealing the waiter's slot."""
        route = make_route(1)
        held = await route.acquire()
        first = await queue_acquire(route)
        held.release()
        newcomer = await queue_acquire(route)
        assert (route.queued, newcomer.done()) == (1, False)
        (await first).release()
        (await newcomer).release()

    async def test_add_endpoint_wakes_waiters(self, make_route: MakeRoute) -> None:
        """A new endpoint (a finished cold start) serves as many waiters as it has slots, in order."""
        route = make_route()
        waiters = [await queue_acquire(route) for _ in range(3)]
        endpoint = make_endpoint("cold", capacity=2)
        route.add_endpoint(endpoint)
        assert (endpoint.in_flight, route.queued) == (2, 1)
        first, second = await waiters[0], await waiters[1]
        assert (first.endpoint, second.endpoint, waiters[2].done()) == (endpoint, endpoint, False)
        first.release()
        third = await waiters[2]
        second.release()
        third.release()

    async def test_fail_waiters(self, make_route: MakeRoute) -> None:
        """fail_waiters answers every queued request with the given error and empties the queue."""
        route = make_route()
        waiters = [await queue_acquire(route) for _ in range(3)]
        error = ColdStartFailed("instance exited with code 1")
        route.fail_waiters(error)
        assert route.queued == 0
        for waiter in waiters:
            with pytest.raises(ColdStartFailed) as excinfo:
                await waiter
            assert excinfo.value is error


class TestRelease:
    async def test_double_release_is_harmless(self, make_route: MakeRoute) -> None:
        """Releasing twice frees one slot; counts never go negative."""
        route = make_route(1)
        lease = await route.acquire()
        lease.release()
        lease.release()
        assert (lease.endpoint.in_flight, route.in_flight) == (0, 0)

    async def test_double_release_hands_over_one_slot(self, make_route: MakeRoute) -> None:
        """A second release does not hand a second slot to the next waiter."""
        route = make_route(1)
        held = await route.acquire()
        waiters = [await queue_acquire(route) for _ in range(2)]
        held.release()
        held.release()
        assert (held.endpoint.in_flight, route.in_flight, route.queued) == (1, 1, 1)
        (await waiters[0]).release()
        (await waiters[1]).release()

    async def test_release_on_removed_endpoint(self, make_route: MakeRoute) -> None:
        """A lease on an endpoint removed mid-request still releases, and waiters never get that endpoint."""
        route = make_route(1)
        held = await route.acquire()
        waiter = await queue_acquire(route)
        route.remove_endpoint(held.endpoint)
        held.release()
        assert (held.endpoint.in_flight, route.in_flight, route.queued, waiter.done()) == (0, 0, 1, False)
        replacement = make_endpoint("new")
        route.add_endpoint(replacement)
        lease = await waiter
        assert lease.endpoint is replacement
        lease.release()


class TestCancellation:
    async def test_cancelled_waiter_leaves_queue(self, make_route: MakeRoute) -> None:
        """A client that disconnects while queued leaves the queue and takes no slot."""
        route = make_route(1)
        held = await route.acquire()
        waiter = await queue_acquire(route)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (route.queued, route.in_flight) == (0, 1)
        held.release()
        assert held.endpoint.in_flight == 0

    async def test_cancelled_as_slot_handed_over(self, make_route: MakeRoute) -> None:
        """A waiter cancelled just as it is handed a slot gives the slot back."""
        route = make_route(1)
        held = await route.acquire()
        waiter = await queue_acquire(route)
        waiter.cancel()
        held.release()  # hands the slot to the waiter before its cancellation runs
        assert (route.in_flight, route.queued) == (1, 0)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (held.endpoint.in_flight, route.in_flight, route.queued) == (0, 0, 0)

    async def test_slot_of_cancelled_waiter_passes_to_next(self, make_route: MakeRoute) -> None:
        """The slot a cancelled waiter gives back goes on to the next waiter in line."""
        route = make_route(1)
        held = await route.acquire()
        cancelled = await queue_acquire(route)
        behind = await queue_acquire(route)
        cancelled.cancel()
        held.release()  # to the cancelled waiter, which passes it on when it wakes
        assert (route.in_flight, route.queued) == (1, 1)
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        lease = await behind
        assert (lease.endpoint.in_flight, route.in_flight, route.queued) == (1, 1, 0)
        lease.release()


class TestOnDemand:
    async def test_called_once_per_queued_request(self, make_route: MakeRoute) -> None:
        """A request that waits, or is refused for a full queue, pokes the scaler once; a served one not."""
        calls: list[int] = []
        route = make_route(1, max_queued=2, on_demand=lambda: calls.append(1))
        held = await route.acquire()
        assert calls == []
        waiters = [await queue_acquire(route) for _ in range(2)]
        assert len(calls) == 2
        with pytest.raises(QueueFull):
            await route.acquire()
        assert len(calls) == 3  # refused, but still demand the autoscaler must see
        held.release()
        (await waiters[0]).release()
        (await waiters[1]).release()
        assert len(calls) == 3


class TestFailure:
    async def test_fails_fast_with_a_copy(self, make_route: MakeRoute) -> None:
        """While the function cannot start, a request with no free slot gets a fresh copy of the failure."""
        route = make_route()
        route.failure = ColdStartFailed("instance exited with code 1", retry_after_s=5)
        with pytest.raises(ColdStartFailed) as excinfo:
            await route.acquire()
        error = excinfo.value
        assert error is not route.failure
        assert (error.message, error.retry_after_s, error.status) == ("instance exited with code 1", 5, 503)
        assert route.queued == 0

    async def test_free_slot_wins_over_failure(self, make_route: MakeRoute) -> None:
        """A free slot still serves even while a failure is recorded."""
        route = make_route(1)
        route.failure = ColdStartFailed("instance exited with code 1")
        lease = await route.acquire()
        assert lease.endpoint.instance_id == "i0"
        lease.release()

    async def test_new_endpoint_clears_failure(self, make_route: MakeRoute) -> None:
        """An endpoint becoming ready clears the recorded failure."""
        route = make_route()
        route.failure = ColdStartFailed("instance exited with code 1")
        route.add_endpoint(make_endpoint("i0"))
        assert route.failure is None


class TestActivatorInPath:
    async def test_queues_by_default(self, make_route: MakeRoute) -> None:
        """With the gateway queue in the path (the default) a full instance makes requests wait."""
        route = make_route(1)
        first = await route.acquire()
        waiting = await queue_acquire(route)
        assert route.queued == 1
        first.release()
        (await waiting).release()

    async def test_straight_to_the_least_loaded_instance(self, make_route: MakeRoute) -> None:
        """Out of the path (excess burst capacity ≥ 0) a request goes to the least loaded full
        instance and waits there, as Knative sends it through the service to the pod's queue."""
        route = make_route(1, 1)
        route.activator_in_path = False
        leases = [await route.acquire() for _ in range(3)]
        assert [e.in_flight for e in route.endpoints] == [2, 1]
        assert (route.queued, route.in_flight) == (0, 3)
        for lease in leases:
            lease.release()

    async def test_no_instance_still_queues(self, make_route: MakeRoute) -> None:
        """With no instance at all there is nowhere to send it: it waits in the queue."""
        route = make_route(queue_timeout_s=SHORT_TIMEOUT_S)
        route.activator_in_path = False
        with pytest.raises(QueueTimeout):
            await route.acquire()


class TestObserver:
    async def test_sees_in_system_counts(self, make_route: MakeRoute) -> None:
        """The observer sees every change of in-flight plus queued, stamped with the clock."""
        recorder = Recorder()
        route = make_route(observer=recorder)
        clock = route.clock
        assert isinstance(clock, FakeClock)
        route.add_endpoint(make_endpoint("i0"))  # (100, 0)
        held = await route.acquire()  # (100, 1)
        clock.advance(1)
        waiter = await queue_acquire(route)  # (101, 2)
        clock.advance(1)
        held.release()  # (102, 1): handed over, still one in the system
        clock.advance(1)
        (await waiter).release()  # (103, 0)
        assert recorder.records == [(100.0, 0), (100.0, 1), (101.0, 2), (102.0, 1), (103.0, 0)]
        assert recorder.requests == [100.0, 101.0]

    async def test_sees_timeout_leave(self, make_route: MakeRoute) -> None:
        """A waiter that times out is recorded leaving the system."""
        recorder = Recorder()
        route = make_route(queue_timeout_s=SHORT_TIMEOUT_S, observer=recorder)
        with pytest.raises(QueueTimeout):
            await route.acquire()
        assert recorder.records == [(100.0, 1), (100.0, 0)]



class TestOnIdle:
    """``on_idle``: the reconciler times each instance's keep-alive from the moment the gateway
    sees it with nothing in flight (``idle_since``), not from its next pass."""

    async def test_told_when_an_endpoint_goes_idle(self, make_route: MakeRoute) -> None:
        """Ready with nothing to do, and on the release that empties it (not on one that leaves a
        request in flight): each time with the endpoint, whose idle_since is the clock's time."""
        told: list[tuple[str, float]] = []
        route = make_route(on_idle=lambda e: told.append((e.instance_id, e.idle_since)))
        route.add_endpoint(make_endpoint("i0", 2))
        assert told == [("i0", 0.0)]  # its ready_at
        first, second = await route.acquire(), await route.acquire()
        route.clock.advance(1.5)  # type: ignore[attr-defined]
        first.release()
        assert told == [("i0", 0.0)]  # one still in flight
        second.release()
        assert told == [("i0", 0.0), ("i0", 101.5)]

    async def test_not_told_when_a_waiter_takes_the_slot(self, make_route: MakeRoute) -> None:
        """A release that hands the slot to a queued request leaves the endpoint busy: no call;
        a new endpoint a waiter takes at once is not idle either."""
        told: list[str] = []
        route = make_route(1, on_idle=lambda e: told.append(e.instance_id))
        assert told == ["i0"]  # ready with nothing to do
        told.clear()
        held = await route.acquire()
        waiter = await queue_acquire(route)
        held.release()
        lease = await waiter
        assert (told, lease.endpoint.instance_id) == ([], "i0")
        late = await queue_acquire(route)
        route.add_endpoint(make_endpoint("i1", 1))
        assert (told, (await late).endpoint.instance_id) == ([], "i1")
        lease.release()
        assert told == ["i0"]
        route.remove_endpoint(route.endpoints[1])  # removed (draining): never idle again
        (await late).release()
        assert told == ["i0"]
