"""The gateway's ASGI app for ``/fn/{name}/{path}``: find the route, take a slot, forward, stream back.

``/fn/{name}@{tag}/{path}`` reaches only the revision tagged ``tag``; otherwise the function's
:class:`~torpor.gateway.traffic.Traffic` picks a revision by weight. Forwarded responses say
which in ``x-torpor-revision``.

Headers on every response: ``x-torpor-request-id``, and for forwarded ones ``x-torpor-instance`` and
``x-torpor-start`` (``cold`` when the request waited for an instance that became ready after it
arrived, ``thawed`` when it waited for a frozen one to thaw, else ``warm``). Errors the gateway
answers itself are JSON: ``{"error", "reason", "function", "request_id"}``.

The hot path (bench/gateway.py) does per request: one pass over the request headers, one
allocation-free routing choice, one ``write()`` to a kept-alive instance connection
(:mod:`torpor.gateway.upstream`), and for a response that arrived whole, one ``write()`` back. Nothing
is logged and nothing is validated with pydantic on the way.

A response that is still arriving when its head does (a handler that yields, SSE) is streamed chunk
by chunk as the instance produces it. While it streams, the gateway watches the client: when
``receive()`` reports ``http.disconnect`` (or ``send()`` fails), it stops reading the instance,
closes that connection and releases the slot at once. ``timeout_s`` bounds the wait for the
response head and every gap between two chunks. An instance that breaks off a response mid-stream
makes the gateway break off the client's response too (no clean end), so truncation is visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

from torpor.clock import Clock
from torpor.constants import DATA_PLANE_MAX_BODY_BYTES
from torpor.error_shape import error_json
from torpor.errors import GatewayError, UpstreamFailed, UpstreamTimeout
from torpor.gateway.route import Endpoint, FunctionRoute, Lease
from torpor.gateway.upstream import (
    ConnectFailed,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimedOut,
)
from torpor.types import Receive, Scope, Send

MAX_BODY_BYTES = DATA_PLANE_MAX_BODY_BYTES  # the default; ``torpor serve`` takes http.max_body_bytes
EXIT_REASON_WAIT_S = 0.5  # a broken connection waits at most this for the instance's exit reason
EXIT_REASON_POLL_S = 0.01
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"host",
     b"proxy-authorization", b"proxy-authenticate", b"content-length", b"expect"}
)
_DROP_FROM_UPSTREAM = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})
_START = {"cold": b"cold", "thawed": b"thawed", "warm": b"warm"}

# Request ids: 32 hex digits, a random per-process prefix and a counter (no syscall per request).
_ID_PREFIX = os.urandom(8).hex()
_ids = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ids):016x}"


class RouteTable(Protocol):
    """A function's routes: the one a request goes to (``tag``: from ``/fn/name@tag/``, or '')."""

    def pick(self, tag: str) -> FunctionRoute | None: ...


def has_dot_segment(path: bytes) -> bool:
    """True when a segment of ``path`` is ``.`` or ``..``, also percent-encoded: such a path is
    refused, never forwarded (an instance must not see ``/../../etc/passwd``)."""
    return any(segment.lower().replace(b"%2e", b".") in (b".", b"..") for segment in path.split(b"/"))


class BrokenStream(Exception):
    """The instance broke off a response whose head was already sent to the client."""


class RequestObserver(Protocol):
    """Told about every finished request (metrics, error logs with the request id)."""

    def observe(self, function: str, start: str, status: int, seconds: float, request_id: bytes,
                instance: bytes) -> None: ...


class _Watched:
    """Wraps ``send`` to note the status, start kind, instance and request id of the response
    (kept as bytes: only a logged error decodes them)."""

    __slots__ = ("instance", "request_id", "send", "start", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0
        self.start = b"none"
        self.instance = b""
        self.request_id = b""

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            for key, value in message["headers"]:
                if key in _WATCHED:
                    setattr(self, _WATCHED[key], value)
        await self.send(message)


_WATCHED = {b"x-torpor-start": "start", b"x-torpor-instance": "instance",
            b"x-torpor-request-id": "request_id"}
_START_NAMES = {b"cold": "cold", b"warm": "warm", b"thawed": "thawed", b"none": "none"}


class Gateway:
    def __init__(self, routes: Mapping[str, RouteTable], clock: Clock,
                 observer: RequestObserver | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.routes = routes
        self.clock = clock
        self.observer = observer
        self.max_body_bytes = max_body_bytes  # also the OpenAI and OIP front doors' bound

    def too_large_message(self) -> str:
        return (f"request body exceeds {self.max_body_bytes} bytes, the data plane's limit "
                "(http.max_body_bytes)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        observer = self.observer
        if observer is None:
            await self._handle(scope, receive, send)
            return
        watched = _Watched(send)
        began = self.clock.now()
        try:
            await self._handle(scope, receive, watched)
        finally:
            name = scope["path"][4:].partition("/")[0].partition("@")[0]
            if name in self.routes:  # unknown names would grow the metrics without bound
                observer.observe(name, _START_NAMES.get(watched.start, "none"), watched.status or 499,
                                 self.clock.now() - began, watched.request_id, watched.instance)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        name, _, _ = path[4:].partition("/")  # strip "/fn/"
        name, _, tag = name.partition("@")
        request_id = None
        lines = []
        declared = 0
        for key, value in scope["headers"]:
            if key in _HOP_BY_HOP:
                if key == b"content-length" and value.isdigit():
                    declared = int(value)
                continue
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
            lines.append(key + b": " + value + b"\r\n")
        if request_id is None:
            request_id = new_request_id()
        lines.append(b"x-torpor-request-id: " + request_id.encode("latin-1") + b"\r\n")
        table = self.routes.get(name)
        if table is None:
            await _error(send, 404, f"function {name!r} not found", "not_found", name, request_id)
            return
        route = table.pick(tag)
        if route is None:
            await _error(send, 404, f"function {name!r} has no revision tagged {tag!r}",
                         "not_found", name, request_id)
            return
        body = None if declared > self.max_body_bytes else await _read_body(receive,
                                                                            self.max_body_bytes)
        if body is None:
            await _error(send, 413, self.too_large_message(), "body_too_large", name, request_id)
            return
        raw_path: bytes = scope.get("raw_path") or path.encode()
        target = b"/" + raw_path[4:].partition(b"/")[2]
        if (b"/." in target or b"%" in target) and has_dot_segment(target):
            await _error(send, 400, "the path has a '.' or '..' segment", "bad_path", name,
                         request_id)
            return
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        await self.dispatch(route, name, scope["method"], target, b"".join(lines), body, receive,
                            send, request_id)

    async def dispatch(self, route: FunctionRoute, name: str, method: str, target: bytes,
                       header_lines: bytes, body: bytes, receive: Receive, send: Send,
                       request_id: str) -> None:
        """Take a slot on ``route`` (queueing as its function's queue says) and forward the request;
        the gateway's own answer when no slot comes. The protocol front doors end here too."""
        arrived_at = self.clock.now()
        try:
            lease = await route.acquire()
        except GatewayError as exc:
            route.errors += 1
            await _gateway_error(send, exc, name, request_id)
            return
        await self._forward(route, lease, method, target, header_lines, body, receive, send,
                            request_id, arrived_at)

    async def _forward(
        self,
        route: FunctionRoute,
        lease: Lease,
        method: str,
        target: bytes,
        header_lines: bytes,
        body: bytes,
        receive: Receive,
        send: Send,
        request_id: str,
        arrived_at: float,
        retried: bool = False,
    ) -> None:
        """Send, stream the answer back; ``lease`` is released in any case (after a timeout, only
        once the instance has really finished the request, so no one is sent to a busy instance)."""
        release_later: asyncio.Future[None] | None = None
        try:
            endpoint = lease.endpoint
            try:
                response = await endpoint.client.request(method, target, header_lines, body,
                                                         route.timeout_s)
            except ConnectFailed as exc:
                # Nothing reached that instance (it died between choice and send): one more try
                # elsewhere. A request an instance did receive is never replayed.
                endpoint.open = False
                if retried:
                    route.errors += 1
                    await _upstream_failed(send, route, endpoint, exc, request_id)
                    return
                lease.release()
                try:
                    replacement = await route.acquire()
                except GatewayError as error:
                    route.errors += 1
                    await _gateway_error(send, error, route.name, request_id)
                    return
                await self._forward(route, replacement, method, target, header_lines, body,
                                    receive, send, request_id, arrived_at, retried=True)
                return
            except UpstreamTimedOut as exc:
                route.errors += 1
                release_later = exc.settled
                message = (f"function {route.name!r} did not answer within "
                           f"timeout_s={route.timeout_s:g}s on instance {endpoint.instance_id}")
                await _gateway_error(send, UpstreamTimeout(message), route.name, request_id,
                                     self._instance_headers(endpoint, arrived_at,
                                                            route.revision_header))
                return
            except UpstreamError as exc:
                route.errors += 1
                reason = await self._exit_reason(endpoint)
                await _upstream_failed(send, route, endpoint, reason or exc, request_id)
                return
            if response.status >= 500:
                route.errors += 1
            await self._respond(response, endpoint, receive, send, request_id, arrived_at,
                                route.revision_header)
        finally:
            if release_later is None or release_later.done():
                lease.release()
            else:
                release_later.add_done_callback(lambda _: lease.release())

    async def _exit_reason(self, endpoint: Endpoint) -> str | None:
        """Why the instance died, when it did (e.g. ``out of memory (memory_mb 256)``): the
        connection breaks a moment before the lifecycle hears of the exit, so wait a little for it
        (at most ``EXIT_REASON_WAIT_S``, only on this failure path)."""
        deadline = self.clock.now() + EXIT_REASON_WAIT_S
        while endpoint.open and self.clock.now() < deadline:
            await self.clock.sleep(EXIT_REASON_POLL_S)
        return endpoint.idle.failure if endpoint.idle is not None else None

    def _instance_headers(self, endpoint: Endpoint, arrived_at: float,
                          revision: bytes) -> list[tuple[bytes, bytes]]:
        if endpoint.ready_at > arrived_at:
            start = b"cold"
        elif endpoint.thawed_at > arrived_at:
            start = b"thawed"
        else:
            start = b"warm"
        return [(b"x-torpor-instance", endpoint.instance_id.encode()),
                (b"x-torpor-revision", revision), (b"x-torpor-start", start)]

    async def _respond(self, response: UpstreamResponse, endpoint: Endpoint, receive: Receive,
                       send: Send, request_id: str, arrived_at: float, revision: bytes) -> None:
        if endpoint.first_response_at is None:
            endpoint.first_response_at = self.clock.now()
        headers = [(k, v) for k, v in response.headers if k not in _DROP_FROM_UPSTREAM]
        headers.append((b"x-torpor-request-id", request_id.encode("latin-1")))
        headers += self._instance_headers(endpoint, arrived_at, revision)
        if response.complete:
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": response.body()})
            return
        await _stream(response, receive, send, response.status, headers)


async def _stream(
    response: UpstreamResponse, receive: Receive, send: Send, status: int,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Pass a response through as it arrives; stop reading the instance when the client leaves."""
    watcher = asyncio.ensure_future(_abort_on_disconnect(receive, response))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": True})  # headers out now
        while True:
            try:
                chunk = await response.read()
            except UpstreamError as exc:
                if watcher.done():
                    return  # the client left: nothing more to say
                raise BrokenStream(f"the instance broke off its response: {exc}") from None
            if not chunk:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except OSError:
        pass  # the client went away (ASGI servers raise an OSError from send())
    finally:
        watcher.cancel()
        response.abort()


async def _abort_on_disconnect(receive: Receive, response: UpstreamResponse) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
    response.abort()


async def _upstream_failed(
    send: Send, route: FunctionRoute, endpoint: Endpoint, exc: Exception | str | None,
    request_id: str,
) -> None:
    if isinstance(exc, str):
        detail = f": {exc}"  # the reason the instance ended
    else:
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    message = f"instance {endpoint.instance_id} of function {route.name!r} failed mid-request{detail}"
    await _gateway_error(send, UpstreamFailed(message), route.name, request_id,
                         [(b"x-torpor-instance", endpoint.instance_id.encode()),
                          (b"x-torpor-revision", route.revision_header)])


async def _gateway_error(send: Send, exc: GatewayError, name: str, request_id: str,
                         extra: list[tuple[bytes, bytes]] | None = None) -> None:
    extra = list(extra or [])
    if exc.retry_after_s is not None:
        extra.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    await _error(send, exc.status, exc.message, exc.reason, name, request_id, extra)


async def _error(
    send: Send,
    status: int,
    message: str,
    reason: str,
    name: str,
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = error_json(message, reason, name, request_id)
    headers = [
        (b"content-type", b"application/json"),
        (b"x-torpor-request-id", request_id.encode("latin-1")),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None past ``limit`` bytes."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        return None
    if not message.get("more_body"):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
