"""A lean HTTP/1.1 server for ASGI apps on uvloop and httptools: torpor's data plane.

Both ends of the hot path run on it: ``torpor serve`` (gateway + control API on one port) and every
instance's runtime (on a Unix socket). It replaced uvicorn there because uvicorn's per-request
machinery cost more than the rest of the gateway put together (bench/gateway.py; see
docs in :mod:`torpor.gateway.proxy`): here a request is one parser callback sequence, one scope dict,
one task, and a small response is one ``write()``.

What it implements of ASGI 3.0 (spec 2.4):

- ``http`` and ``lifespan`` scopes; keep-alive, pipelining (answered in order), ``Expect: 100-continue``,
  HEAD, request bodies streamed with back-pressure (reading pauses past ``BODY_HIGH_WATER_BYTES``);
- response framing: the app's ``content-length`` if it sends one, else a one-message body gets a
  content length and a multi-message body is chunked; headers are written together with the first
  body message, so a streaming app that wants its headers out early sends an empty body message with
  ``more_body``;
- ``send()`` on a connection the client closed raises :class:`ClientDisconnected` (an ``OSError``, as
  the ASGI spec allows), and ``receive()`` returns ``http.disconnect`` as soon as the client is gone,
  so a proxy or a streaming handler can stop at once;
- graceful shutdown on SIGINT/SIGTERM: stop listening, close idle connections, let in-flight
  requests finish for up to ``graceful_timeout_s``, then the lifespan shutdown; a second signal
  skips the wait.

Not implemented: HTTP/2, WebSockets (an upgrade request gets 400), TLS.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from torpor.types import ASGIApp, Message

log = logging.getLogger(__name__)

BODY_HIGH_WATER_BYTES = 256 * 1024
MAX_PIPELINED = 16
_ASGI = {"version": "3.0", "spec_version": "2.4"}
_DISCONNECT: Message = {"type": "http.disconnect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in http.HTTPStatus
}


class ClientDisconnected(OSError):
    """``send()`` was called after the client closed the connection."""


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class _Date:
    """The ``date`` header, formatted at most once a second."""

    second = 0
    value = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return cls.value


class _Cycle:
    """One request and its response on a connection: the ``receive`` and ``send`` the app gets."""

    __slots__ = ("body", "body_size", "chunked", "conn", "continue_sent", "disconnect_waiter",
                 "expect_continue", "head", "keep_alive", "more_body", "request_done", "response_complete",
                 "response_started", "scope", "waiter")

    def __init__(self, conn: _Connection, scope: dict[str, Any], keep_alive: bool, expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect
        self.continue_sent = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.more_body = True
        self.request_done = False  # the app has been given the last body message
        self.waiter: asyncio.Future[None] | None = None
        self.disconnect_waiter: asyncio.Future[None] | None = None
        self.response_started = False
        self.response_complete = False
        self.head: bytes | None = None  # status line and headers, written with the first body message
        self.chunked: bool | None = False  # None: undecided until the first body message

    # receive ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> Message:
        conn = self.conn
        if not self.request_done:
            if not self.body and self.more_body and not conn.closed:
                if self.expect_continue and not self.continue_sent:
                    self.continue_sent = True
                    conn.transport.write(_CONTINUE)
                self.waiter = conn.loop.create_future()
                await self.waiter
                self.waiter = None
            if conn.closed and self.more_body:
                self.request_done = True
                return _DISCONNECT
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self.body.clear()
            self.body_size = 0
            if conn.reading_paused and conn.parsing is self:
                conn.resume_reading()
            self.request_done = not self.more_body
            return {"type": "http.request", "body": body, "more_body": self.more_body}
        if not conn.closed and not self.response_complete:
            self.disconnect_waiter = conn.loop.create_future()
            await self.disconnect_waiter
        return _DISCONNECT

    def _disconnected(self) -> None:
        self._wake()
        waiter = self.disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # send ------------------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        conn = self.conn
        if conn.closed:
            raise ClientDisconnected("the client closed the connection")
        if self.head is None and not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']!r}")
            self.response_started = True
            self.head = self._head(message["status"], message.get("headers", ()))
            return
        if message["type"] != "http.response.body" or self.response_complete:
            raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        head = self.head
        if head is not None:
            self.head = None
            if self.chunked is None:  # the app gave no framing: decide it from this first message
                if more_body:
                    self.chunked = True
                    head += b"transfer-encoding: chunked\r\n"
                else:
                    self.chunked = False
                    head += b"content-length: %d\r\n" % len(body)
            head += b"\r\n"
        else:
            head = b""
        if self.scope["method"] == "HEAD":
            data = head
        elif self.chunked:
            if body:
                data = head + b"%x\r\n" % len(body) + body + (b"\r\n" if more_body else b"\r\n0\r\n\r\n")
            else:
                data = head if more_body else head + b"0\r\n\r\n"
        else:
            data = head + body if head else body
        if data:
            conn.transport.write(data)
        if not more_body:
            self.response_complete = True
            conn.cycle_done(self)
        elif conn.write_paused:
            await conn.drain()

    def _head(self, status: int, headers: Any) -> bytes:
        parts = [_status_line(status)]
        self.chunked = None
        bodyless = status < 200 or status in (204, 304)
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                self.chunked = False
            elif lname == b"transfer-encoding":
                if b"chunked" in value.lower():
                    self.chunked = True
                else:
                    continue
            elif lname == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue
            elif lname == b"date":
                continue
            parts.append(lname + b": " + value + b"\r\n")
        if bodyless:
            self.chunked = False
        parts.append(_Date.header())
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs one app call per request, in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.closed = False
        self.reading_paused = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.parsing: _Cycle | None = None  # the request being parsed
        self.active: _Cycle | None = None  # the request whose response is being produced
        self.task: asyncio.Task[None] | None = None
        self.pipeline: deque[_Cycle] = deque()
        self.idle_since = self.loop.time()
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None

    # transport callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
            sock = transport.get_extra_info("sockname")
            if isinstance(sock, tuple):
                self.local = (str(sock[0]), int(sock[1]))
            s = transport.get_extra_info("socket")
            if s is not None and s.family in (socket.AF_INET, socket.AF_INET6):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.active is not None:
            self.active._disconnected()
        for cycle in self.pipeline:
            cycle._disconnected()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self.write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b"upgrades (WebSocket, h2c) are not supported\n")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}\n".encode())

    def _reject(self, status: int, body: bytes) -> None:
        if self.active is None and not self.closed:
            self.transport.write(_status_line(status) + b"content-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()

    # parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url
        if url[:1] != b"/":  # absolute-form (a proxy request) or '*'
            try:
                parsed = httptools.parse_url(url)
                raw_path, query = parsed.path or b"/", parsed.query or b""
            except httptools.HttpParserInvalidURLError:
                raw_path, query = url, b""
        else:
            raw_path, _, query = url.partition(b"?")
        path = unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": parser.get_http_version(),
            "server": self.local,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path.decode("utf-8", "surrogateescape"),
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
        }
        if self.server.state:
            scope["state"] = self.server.state.copy()
        expect = False
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue":
                expect = True
        cycle = _Cycle(self, scope, parser.should_keep_alive() and not self.server.stopping, expect)
        self.parsing = cycle
        if self.active is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            if len(self.pipeline) >= MAX_PIPELINED and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.body.append(body)
        cycle.body_size += len(body)
        cycle._wake()
        if cycle.body_size > BODY_HIGH_WATER_BYTES and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        assert cycle is not None
        cycle.more_body = False
        cycle._wake()

    # running the app -------------------------------------------------------------------------------

    def _start(self, cycle: _Cycle) -> None:
        self.active = cycle
        self.task = self.loop.create_task(self._run(cycle))

    async def _run(self, cycle: _Cycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except ClientDisconnected:
            pass
        except Exception:
            log.exception("%s %s failed", cycle.scope["method"], cycle.scope["path"])
            self._end(cycle, failed=True)
            return
        except BaseException:  # cancelled at shutdown
            self._end(cycle, failed=True)
            raise
        self._end(cycle, failed=False)

    def _end(self, cycle: _Cycle, *, failed: bool) -> None:
        """After the app returned: answer 500 if it never did, close if its response is unfinished."""
        if cycle.response_complete:
            return
        if (not cycle.response_started or cycle.head is not None) and not self.closed:
            if not failed:
                log.error("%s %s returned without a response", cycle.scope["method"], cycle.scope["path"])
            body = b"Internal Server Error\n"
            self.transport.write(
                _status_line(500) + b"content-type: text/plain; charset=utf-8\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        cycle.response_complete = True
        cycle.keep_alive = False
        self.cycle_done(cycle)

    def cycle_done(self, cycle: _Cycle) -> None:
        """The response is complete: close, or start the next pipelined request."""
        if cycle is not self.active:
            return
        cycle._disconnected()  # wakes a receive() waiting for the end: it returns http.disconnect
        self.active = None
        self.task = None
        if not cycle.keep_alive or cycle.more_body or self.closed:
            # close when asked to, or when the request body was not fully read (the rest of it
            # would be parsed as the next request)
            if not self.closed:
                self.transport.close()
            return
        self.idle_since = self.loop.time()
        if self.pipeline:
            self._start(self.pipeline.popleft())
        if self.reading_paused and len(self.pipeline) < MAX_PIPELINED and (
                self.parsing is None or self.parsing.body_size <= BODY_HIGH_WATER_BYTES):
            self.resume_reading()
        if self.server.stopping and self.active is None:
            self.transport.close()


class HttpServer:
    """Serve one ASGI app; ``run()`` owns the event loop, ``serve()`` runs inside one."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        lifespan: bool = False,
        graceful_timeout_s: float = 10.0,
        keep_alive_s: float | None = 75.0,
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        self.graceful_timeout_s = graceful_timeout_s
        self.keep_alive_s = keep_alive_s
        self.connections: set[_Connection] = set()
        self.state: dict[str, Any] = {}
        self.started = False
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._should_exit: asyncio.Event | None = None
        self._force_exit = False
        self._lifespan_queue: asyncio.Queue[Message] | None = None
        self._lifespan_reply: asyncio.Queue[Message] | None = None
        self._lifespan_task: asyncio.Task[None] | None = None

    # running ---------------------------------------------------------------------------------------

    def run(self, *, host: str | None = None, port: int | None = None, uds: str | None = None) -> None:
        """Serve until SIGINT/SIGTERM; uvloop when it is installed."""
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self.serve(host=host, port=port, uds=uds, handle_signals=True))

    async def serve(self, *, host: str | None = None, port: int | None = None, uds: str | None = None,
                    handle_signals: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self._should_exit = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.loop.add_signal_handler(sig, self.handle_exit)
        if self.lifespan and not await self._lifespan_startup():
            return
        listener = await self._listen(host, port, uds)
        self.started = True
        sweeper = self.loop.create_task(self._sweep_idle()) if self.keep_alive_s else None
        try:
            await self._should_exit.wait()
        finally:
            if sweeper is not None:
                sweeper.cancel()
            listener.close()
            await self._drain_connections()
            if uds is not None:
                try:
                    os.unlink(uds)
                except OSError:
                    pass
            if self.lifespan:
                await self._lifespan_shutdown()

    async def _listen(self, host: str | None, port: int | None, uds: str | None) -> asyncio.Server:
        def factory() -> _Connection:
            return _Connection(self)

        if uds is not None:
            if os.path.exists(uds):
                os.unlink(uds)
            return await self.loop.create_unix_server(factory, path=uds, backlog=1024)
        if port is None:
            raise ValueError("serve needs a port or a uds path")
        return await self.loop.create_server(factory, host=host, port=port, backlog=1024,
                                             reuse_address=True)

    def handle_exit(self) -> None:
        """First signal: graceful shutdown; second: stop waiting for in-flight requests."""
        if self.stopping:
            self._force_exit = True
        self.stopping = True
        if self._should_exit is not None:
            self._should_exit.set()

    async def _sweep_idle(self) -> None:
        assert self.keep_alive_s is not None
        while True:
            await asyncio.sleep(min(1.0, self.keep_alive_s))
            limit = self.loop.time() - self.keep_alive_s
            for conn in list(self.connections):
                if conn.active is None and conn.idle_since < limit:
                    conn.transport.close()

    async def _drain_connections(self) -> None:
        for conn in list(self.connections):
            if conn.active is None:
                conn.transport.close()
        deadline = self.loop.time() + self.graceful_timeout_s
        while any(c.active is not None for c in self.connections):
            if self._force_exit or self.loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        tasks = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            conn.transport.abort()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # lifespan --------------------------------------------------------------------------------------

    async def _lifespan_startup(self) -> bool:
        self._lifespan_queue = asyncio.Queue()
        self._lifespan_reply = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        self._lifespan_task = self.loop.create_task(self._run_lifespan(scope))
        await self._lifespan_queue.put({"type": "lifespan.startup"})
        reply = await self._lifespan_reply.get()
        if reply["type"] == "lifespan.startup.failed":
            log.error("startup failed: %s", reply.get("message", ""))
            return False
        return True

    async def _lifespan_shutdown(self) -> None:
        assert self._lifespan_queue is not None and self._lifespan_reply is not None
        if self._lifespan_task is None or self._lifespan_task.done():
            return
        await self._lifespan_queue.put({"type": "lifespan.shutdown"})
        reply = await self._lifespan_reply.get()
        if reply["type"] == "lifespan.shutdown.failed":
            log.error("shutdown failed: %s", reply.get("message", ""))

    async def _run_lifespan(self, scope: dict[str, Any]) -> None:
        assert self._lifespan_queue is not None and self._lifespan_reply is not None
        queue, reply = self._lifespan_queue, self._lifespan_reply

        async def send(message: Message) -> None:
            await reply.put(message)

        try:
            await self.app(scope, queue.get, send)
        except BaseException as exc:
            log.exception("lifespan failed")
            await reply.put({"type": "lifespan.startup.failed", "message": str(exc)})
            if not isinstance(exc, Exception):
                raise


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
