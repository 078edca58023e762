"""The gateway on real sockets in front of real instance servers, all in one event loop.

Streaming order and early disconnects, overload status codes, retries and upstream failures. Every
route built here is checked when its test ends: nothing in flight, nothing queued, every endpoint 0.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import torpor
from torpor.address import Address
from torpor.clock import MonotonicClock
from torpor.gateway.proxy import Gateway
from torpor.gateway.route import Endpoint, FunctionRoute
from torpor.gateway.routing_policies import RoutingPolicy
from torpor.gateway.upstream import UpstreamClient
from torpor.httpserver import UNLIMITED, HttpServer
from torpor.runtime.app import ModelApp


class Stack:
    """A gateway and instances, each on its own Unix socket served by torpor's HttpServer."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.clock = MonotonicClock()
        self.routes: dict[str, FunctionRoute] = {}
        self.servers: list[tuple[HttpServer, asyncio.Task[None]]] = []
        self.clients: list[UpstreamClient] = []
        self.path = ""
        self.http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.path = await self._serve(Gateway(self.routes, self.clock), "gateway")
        transport = httpx.AsyncHTTPTransport(uds=self.path, limits=httpx.Limits(max_connections=64))
        self.http = httpx.AsyncClient(transport=transport, base_url="http://torpor", timeout=10)

    def route(self, name: str = "fn", *, max_queued: int = 10, queue_timeout_s: float = 5.0,
              timeout_s: float = 10.0, policy: str | None = None) -> FunctionRoute:
        route = FunctionRoute(name, clock=self.clock, max_queued=max_queued,
                              queue_timeout_s=queue_timeout_s, timeout_s=timeout_s,
                              policy=RoutingPolicy.make(policy))
        self.routes[name] = route
        return route

    async def instance(self, route: FunctionRoute, model: torpor.Model, concurrency: int = 1,
                       instance_id: str | None = None) -> Endpoint:
        instance_id = instance_id or f"{route.name}-{len(route.endpoints)}"
        path = await self._serve(ModelApp(model, concurrency), instance_id, limits=UNLIMITED)
        return self.endpoint(route, path, concurrency, instance_id)

    def endpoint(self, route: FunctionRoute, socket_path: str, capacity: int,
                 instance_id: str) -> Endpoint:
        client = UpstreamClient(Address.unix(socket_path))
        self.clients.append(client)
        endpoint = Endpoint(instance_id, capacity, client, ready_at=0.0)
        route.add_endpoint(endpoint)
        return endpoint

    async def _serve(self, app: Any, name: str, **kwargs: Any) -> str:
        path = str(self.tmp_path / f"{name}.sock")
        server = HttpServer(app, graceful_timeout_s=1, **kwargs)
        task = asyncio.create_task(server.serve(uds=path))
        while not server.started:
            await asyncio.sleep(0.001)
        self.servers.append((server, task))
        return path

    async def open_stream(self, name: str = "fn") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw connection with one request written on it (to read a stream byte by byte)."""
        reader, writer = await asyncio.open_unix_connection(self.path)
        writer.write(f"POST /fn/{name}/invoke HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{{}}"
                     .encode())
        return reader, writer

    async def settled(self, timeout_s: float = 2.0) -> None:
        """Wait until no route has anything in flight or queued."""
        deadline = self.clock.now() + timeout_s
        while any(r.in_system for r in self.routes.values()) and self.clock.now() < deadline:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        for server, _ in reversed(self.servers):
            server.handle_exit()
        await asyncio.gather(*(task for _, task in self.servers))
        for client in self.clients:
            await client.close()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    stack = Stack(tmp_path)
    await stack.start()
    yield stack
    await stack.settled()
    for route in stack.routes.values():
        assert (route.in_flight, route.queued) == (0, 0), "route load leaked"
        assert [e.in_flight for e in route.endpoints] == [0] * len(route.endpoints), "slot leaked"
    await stack.close()


class Echo(torpor.Model):
    def predict(self, payload: Any) -> Any:
        return {"echo": payload}


class Held(torpor.Model):
    """Answers once ``release`` is set: keeps its slot busy for as long as a test needs."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def predict(self, payload: Any) -> Any:
        await self.release.wait()
        return "done"


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout_s: float = 3.0) -> bytes:
    return await asyncio.wait_for(reader.readuntil(marker), timeout_s)


class TestForwarding:
    async def test_answer_and_headers(self, stack: Stack) -> None:
        """The instance's answer comes back with torpor's headers and the upstream's content type."""
        await stack.instance(stack.route(), Echo(), instance_id="fn-a")
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke", json={"x": 1})
        assert response.status_code == 200 and response.json() == {"echo": {"x": 1}}
        assert response.headers["content-type"] == "application/json"
        assert (response.headers["x-torpor-instance"], response.headers["x-torpor-start"]) == (
            "fn-a", "warm")
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-torpor-request-id"])

    async def test_request_ids_are_unique(self, stack: Stack) -> None:
        """Every request gets its own id."""
        await stack.instance(stack.route(), Echo())
        assert stack.http is not None
        ids = {(await stack.http.post("/fn/fn/invoke")).headers["x-torpor-request-id"]
               for _ in range(5)}
        assert len(ids) == 5

    async def test_unknown_function_is_404(self, stack: Stack) -> None:
        """A function that does not exist is a JSON 404 naming it."""
        assert stack.http is not None
        response = await stack.http.post("/fn/nope/invoke")
        assert response.status_code == 404
        assert response.json()["error"] == "function 'nope' not found"

    async def test_retries_once_when_nothing_was_sent(self, stack: Stack) -> None:
        """An instance that refuses the connection is skipped once: another one answers."""
        route = stack.route(policy="first_available")
        dead = stack.endpoint(route, str(stack.tmp_path / "gone.sock"), 1, "fn-dead")
        await stack.instance(route, Echo(), instance_id="fn-live")
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke", json=1)
        assert (response.status_code, response.headers["x-torpor-instance"]) == (200, "fn-live")
        assert dead.accepting is False

    async def test_second_failure_is_502(self, stack: Stack) -> None:
        """When the retry also finds no instance listening, the answer is a 502."""
        route = stack.route()
        stack.endpoint(route, str(stack.tmp_path / "a.sock"), 1, "fn-a")
        stack.endpoint(route, str(stack.tmp_path / "b.sock"), 1, "fn-b")
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke")
        assert (response.status_code, response.json()["reason"]) == (502, "instance_failed")

    async def test_instance_that_hangs_up_is_502(self, stack: Stack) -> None:
        """An instance that closes the connection after getting the request is a 502, not a retry."""
        received: list[bytes] = []

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received.append(await reader.readuntil(b"\r\n\r\n"))
            writer.close()

        path = str(stack.tmp_path / "rude.sock")
        server = await asyncio.start_unix_server(hang_up, path)
        stack.endpoint(stack.route(), path, 1, "fn-rude")
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke")
        server.close()
        assert (response.status_code, response.json()["reason"]) == (502, "instance_failed")
        assert len(received) == 1

    async def test_slow_instance_is_504(self, stack: Stack) -> None:
        """No answer within timeout_s is a 504 naming the timeout; the slot is freed."""
        held = Held()
        await stack.instance(stack.route(timeout_s=0.1), held)
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke")
        held.release.set()
        assert response.status_code == 504
        assert response.json()["reason"] == "function_timeout"
        assert "timeout_s=0.1s" in response.json()["error"]


class Steps(torpor.Model):
    """Yields "a", waits for the test to say go, yields "b" and "c"; records that it was closed."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.closed = asyncio.Event()

    async def predict(self, payload: Any) -> Any:
        try:
            yield "a"
            await self.go.wait()
            yield "b"
            yield "c"
        finally:
            self.closed.set()


class SyncSteps(torpor.Model):
    """A synchronous generator: yields "a", blocks its thread until go, yields "b"."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.closed = threading.Event()
        self.produced: list[str] = []

    def predict(self, payload: Any) -> Any:
        try:
            self.produced.append("a")
            yield "a"
            self.go.wait(5)
            self.produced.append("b")
            yield "b"
        finally:
            self.closed.set()


class TestStreaming:
    async def test_chunks_pass_through_unbuffered_and_in_order(self, stack: Stack) -> None:
        """The first chunk reaches the client while the handler is still working on the next."""
        model = Steps()
        await stack.instance(stack.route(), model)
        reader, writer = await stack.open_stream()
        head = await read_until(reader, b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head and b"content-type: text/plain" in head
        assert await read_until(reader, b"a\r\n") == b"1\r\na\r\n"
        model.go.set()  # only now may "b" be produced
        assert await read_until(reader, b"0\r\n\r\n") == b"1\r\nb\r\n1\r\nc\r\n0\r\n\r\n"
        writer.close()

    async def test_server_sent_events(self, stack: Stack) -> None:
        """Response(body=generator, content_type='text/event-stream') streams SSE through."""
        class Events(torpor.Model):
            def predict(self, payload: Any) -> Any:
                return torpor.Response(body=(f"data: {i}\n\n" for i in range(3)),
                                       content_type="text/event-stream")

        await stack.instance(stack.route(), Events(), concurrency=2)
        assert stack.http is not None
        async with stack.http.stream("POST", "/fn/fn/invoke") as response:
            assert response.headers["content-type"] == "text/event-stream"
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"

    async def test_ndjson_items(self, stack: Stack) -> None:
        """Items that are not text or bytes stream as one JSON document per line."""
        class Tokens(torpor.Model):
            async def predict(self, payload: Any) -> Any:
                for token in ("x", "y"):
                    yield {"token": token}

        await stack.instance(stack.route(), Tokens())
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke")
        assert response.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line) for line in response.text.splitlines()] == [
            {"token": "x"}, {"token": "y"}]

    async def test_disconnect_releases_the_slot_at_once(self, stack: Stack) -> None:
        """A client that leaves mid-stream frees the slot and the handler's generator is closed."""
        model = Steps()
        route = stack.route()
        endpoint = await stack.instance(route, model)
        reader, writer = await stack.open_stream()
        await read_until(reader, b"a\r\n")
        assert (route.in_flight, endpoint.in_flight) == (1, 1)
        writer.close()
        await stack.settled()
        assert (route.in_flight, endpoint.in_flight) == (0, 0)
        await asyncio.wait_for(model.closed.wait(), 2)  # the generator stopped where it waited
        assert not model.go.is_set()

    async def test_disconnect_from_a_sync_generator(self, stack: Stack) -> None:
        """A blocked synchronous generator is closed once its current item is done; no more is sent."""
        model = SyncSteps()
        route = stack.route()
        await stack.instance(route, model)
        reader, writer = await stack.open_stream()
        await read_until(reader, b"a\r\n")
        writer.close()
        await stack.settled()
        assert route.in_flight == 0  # released while the generator is still blocked
        model.go.set()
        assert await asyncio.to_thread(model.closed.wait, 2)
        assert model.produced == ["a", "b"]

    async def test_next_request_after_a_disconnect(self, stack: Stack) -> None:
        """After an aborted stream the instance serves the next request normally."""
        model = Steps()
        await stack.instance(stack.route(), model)
        reader, writer = await stack.open_stream()
        await read_until(reader, b"a\r\n")
        writer.close()
        await stack.settled()
        model.go.set()
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke")
        assert (response.status_code, response.text) == (200, "abc")


class TestOverload:
    async def test_burst_of_ten_times_capacity(self, stack: Stack) -> None:
        """10 requests at 1 slot and 3 queue places: 6 fast 503s, 3 504s at the queue timeout, 1 answer."""
        held = Held()
        route = stack.route(max_queued=3, queue_timeout_s=1.0)
        await stack.instance(route, held)
        assert stack.http is not None
        first = asyncio.create_task(stack.http.post("/fn/fn/invoke"))
        while route.in_flight == 0:
            await asyncio.sleep(0.001)
        burst = [asyncio.create_task(stack.http.post("/fn/fn/invoke")) for _ in range(9)]
        done, _ = await asyncio.wait(burst, timeout=0.7)  # the queued 3 wait until 1.0 s
        assert route.queued == 3  # the queue never grows past queue.max_queued
        fast = [task.result() for task in done]
        assert [(r.status_code, r.headers.get("retry-after"), r.json()["reason"]) for r in fast] == [
            (503, "1", "queue_full")] * 6
        late = await asyncio.wait_for(asyncio.gather(*(t for t in burst if t not in done)), 3)
        assert [(r.status_code, r.json()["reason"]) for r in late] == [(504, "queue_timeout")] * 3
        held.release.set()
        answered = await asyncio.wait_for(first, 3)
        assert (answered.status_code, answered.text) == (200, "done")
