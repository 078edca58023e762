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

Hostile clients (:class:`Limits`; ``torpor serve`` reads them from the server config's ``http:``):

- a request line and headers over ``max_header_bytes`` get 431 and the connection is closed; bytes
  are counted as they arrive, so a 100 MB header costs one read buffer past the limit, not 100 MB
  (pipelined requests before it are answered first);
- a request whose headers are not complete ``header_timeout_s`` after it began (after the
  connection opened, for its first request) gets 408 and is closed (a connection that sent nothing
  is closed without an answer); a kept-alive connection idle for ``keep_alive_s`` is closed;
- at most ``max_connections_per_client`` connections from one address and ``max_connections`` in
  all: at the total cap a new connection closes the oldest ones that have no request running
  (1/``EVICT_SHARE`` of the cap at once, so the scan is not paid per connection: discarding input
  after a refusal first, then still sending headers, then idle), so thousands of half-sent
  requests cannot lock out ``/healthz`` or the data plane; with every connection running a
  request, and over the per-address cap, a new one gets 503 and is closed. Each is logged, at most
  once per ``CAP_LOG_INTERVAL_S`` per kind, with the count since the last line;
- nothing of this is kept per request beyond a few attributes of the connection (measured: +0.2 to
  0.4 us on a ~7 us request path); the sweeper scans the connections every
  ``min(1 s, timeout / 4)``;
- after a 431, 408 or an unread request body (a 413) the server stops reading requests, closes
  its sending side and discards what the client still sends for up to ``LINGER_S`` (a lingering
  close): closing with unread data would make the kernel answer with a reset, which can destroy
  the response before the client reads it.

Not implemented: HTTP/2, WebSockets (an upgrade request gets 400), TLS.
"""

from __future__ import annotations

import asyncio
import email.utils
import heapq
import http
import logging
import os
import resource
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

from torpor.error_shape import error_json
from torpor.types import ASGIApp, Message

log = logging.getLogger(__name__)

BODY_HIGH_WATER_BYTES = 256 * 1024
MAX_PIPELINED = 16
MAX_HEADER_BYTES = 64 * 1024
HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 75.0
LINGER_S = 1.0  # after a 431/408, discard what the client still sends for at most this long
LINGER_MAX_BYTES = 4 * 1024 * 1024  # ... or this many bytes
CAP_LOG_INTERVAL_S = 10.0
EVICT_SHARE = 32  # at the total cap, close 1/32 of it (at least one) of the oldest idle connections
MAX_DEFAULT_CONNECTIONS = 10_000
FD_LIMIT_CEILING = 1 << 20  # the soft fd limit torpor raises itself to when the hard one is unlimited
_ASGI = {"version": "3.0", "spec_version": "2.4"}
_DISCONNECT: Message = {"type": "http.disconnect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in http.HTTPStatus
}


class ClientDisconnected(OSError):
    """``send()`` was called after the client closed the connection."""


class _HeadersTooLarge(Exception):
    """Raised in a parser callback to stop parsing at a request whose headers are too large."""


@dataclass(frozen=True)
class Limits:
    """What one client may cost the server; None turns a bound off (an instance's runtime, whose
    only client is the gateway, runs without them)."""

    max_header_bytes: int | None = MAX_HEADER_BYTES
    header_timeout_s: float | None = HEADER_TIMEOUT_S
    keep_alive_s: float | None = KEEP_ALIVE_S
    max_connections: int | None = None
    max_connections_per_client: int | None = None


UNLIMITED = Limits(max_header_bytes=None, header_timeout_s=None, keep_alive_s=None)


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_LIMIT_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # e.g. above fs.nr_open: keep what there is
            pass
    return FD_LIMIT_CEILING if soft == resource.RLIM_INFINITY else soft


def default_max_connections(fd_limit: int) -> int:
    """Half the fd limit (the other half for instances, their pipes and sockets, the store, logs),
    at least 64 and at most ``MAX_DEFAULT_CONNECTIONS``."""
    return max(64, min(MAX_DEFAULT_CONNECTIONS, fd_limit // 2))


class _RateLimitedLog:
    """One warning per kind per ``CAP_LOG_INTERVAL_S``, counting the events it did not log."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < CAP_LOG_INTERVAL_S:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        if more:
            message += f" ({more} more like it in the last {now - last:.0f} s)" if last else ""
        log.warning("%s", message)


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def _header_end(data: bytes) -> int:
    """Where the header block ends in ``data`` (after its blank line), or -1."""
    crlf, lf = data.find(b"\n\r\n"), data.find(b"\n\n")
    if crlf < 0:
        return lf + 2 if lf >= 0 else -1
    return crlf + 3 if lf < 0 or crlf < lf else lf + 2


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
        # header phase: from the end of one request's headers to the end of the next one's
        self.in_head = True
        self.head_bytes = 0  # bytes received in this header phase (bounded by max_header_bytes)
        self.head_since: float | None = None  # when the awaited headers began (timed); None: idle
        self.begun = 0  # requests begun and requests whose headers completed, on this connection
        self.heads = 0
        self.discarding = False  # refused (431/408) or lingering: input is dropped until closed
        self.refusal: bytes | None = None  # a 431 to send once the requests before it are answered
        self.big_chunk = False  # the chunk being parsed is larger than max_header_bytes
        self.counted: str | None = None  # the address this connection counts against
        self.max_header_bytes = server.limits.max_header_bytes

    # transport callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        server = self.server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.client = (str(peer[0]), int(peer[1]))
            sock = transport.get_extra_info("sockname")
            if isinstance(sock, tuple):
                self.local = (str(sock[0]), int(sock[1]))
            s = transport.get_extra_info("socket")
            if s is not None and s.family in (socket.AF_INET, socket.AF_INET6):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not server.admit(self):
            return
        server.connections.add(self)
        self.head_since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        server = self.server
        server.connections.discard(self)
        if self.counted is not None:
            server.release(self.counted)
            self.counted = None
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
        if self.discarding:
            self.head_bytes += len(data)
            if self.head_bytes > LINGER_MAX_BYTES:
                self.transport.close()
            return
        in_head, heads = self.in_head, self.heads
        limit = self.max_header_bytes
        big = limit is not None and len(data) + self.head_bytes > limit
        if big:
            assert limit is not None
            if in_head:
                end = _header_end(data)  # only a chunk that could pass the limit is searched
                if end >= 0 and self.head_bytes + end > limit:
                    self._refuse_headers(limit)
                    return
            # the chunk may hold whole requests after the first: on_headers_complete sizes them
            self.big_chunk = len(data) > limit
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.big_chunk = False
            if isinstance(exc.__context__, _HeadersTooLarge) and limit is not None:
                self._refuse_headers(limit)
                return
            self._reject(400, f"malformed HTTP request: {exc}\n".encode())
            return
        except httptools.HttpParserUpgrade:
            self._reject(400, b"upgrades (WebSocket, h2c) are not supported\n")
            return
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}\n".encode())
            return
        if big:
            self.big_chunk = False
        if self.in_head and in_head and heads == self.heads:
            # the whole chunk belongs to the headers being received (a chunk that also ended an
            # earlier request is not counted: the bound is then one read buffer looser)
            self.head_bytes += len(data)
            if limit is not None and self.head_bytes > limit:
                self._refuse_headers(limit)

    def _refuse_headers(self, limit: int) -> None:
        self._refuse(431, f"the request line and headers exceed {limit} bytes, the server's limit "
                     "(http.max_header_bytes)", "headers_too_large")

    def _reject(self, status: int, body: bytes) -> None:
        if self.active is None and not self.closed:
            self.transport.write(_status_line(status) + b"content-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        self.transport.close()

    def _refuse(self, status: int, message: str, reason: str) -> None:
        """Answer ``status`` with torpor's JSON error and close the connection lingering (see the
        module's docs); behind pipelined requests, once they are answered. Input stops here."""
        if self.closed or self.discarding:
            return
        self.discarding = True
        body = error_json(message, reason)
        self.refusal = (_status_line(status) + _Date.header() +
                        b"content-type: application/json\r\nconnection: close\r\n"
                        b"content-length: %d\r\n\r\n" % len(body) + body)
        if self.active is None:
            self._send_refusal()

    def _send_refusal(self) -> None:
        if self.refusal is not None:
            self.transport.write(self.refusal)
            self.refusal = None
        self.linger()

    def linger(self) -> None:
        """Stop parsing, send FIN, discard input until the client closes or ``LINGER_S`` passes."""
        self.discarding = True
        self.head_bytes = 0
        self.resume_reading()
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
                return
        except OSError:
            self.transport.close()
            return
        self.loop.call_later(LINGER_S, self.transport.close)

    def header_timeout(self) -> None:
        """The awaited headers did not complete in time: 408 if any byte of them came, else close."""
        if self.begun != self.heads:
            timeout = self.server.limits.header_timeout_s
            self._refuse(408, f"the request's headers were not complete within {timeout:g} s "
                         "(http.header_timeout_s)", "header_timeout")
        else:
            self.transport.close()

    # parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self.begun += 1
        if self.head_since is None:  # the first byte after an idle keep-alive wait
            self.head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.big_chunk:
            limit = self.max_header_bytes
            assert limit is not None
            # a lower bound of the header block's size (the separators counted as 4 bytes a line)
            size = len(self._url) + 16 + sum(len(n) + len(v) + 4 for n, v in self._headers)
            if size > limit:
                raise _HeadersTooLarge()
        self.in_head = False
        self.head_bytes = 0
        self.head_since = None
        self.heads += 1
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
        self.in_head = True
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
            # would be parsed as the next request: discard it for a moment, so that the client
            # sees the response, a 413 say, rather than a reset)
            if cycle.more_body and not self.closed:
                self.linger()
            elif not self.closed:
                self.transport.close()
            return
        self.idle_since = now = self.loop.time()
        if self.pipeline:
            self._start(self.pipeline.popleft())
        elif self.refusal is not None:  # the requests before a refused one are answered
            self._send_refusal()
            return
        elif self.head_since is not None:  # the next request's headers are arriving: time them now
            self.head_since = now
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
        limits: Limits | None = None,
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        self.graceful_timeout_s = graceful_timeout_s
        self.limits = limits if limits is not None else Limits()
        # a connection without a running request awaits or receives headers (``head_since`` set),
        # is idle between kept-alive requests, or discards input after a 431/408; nothing is kept
        # per request for them (the hot path): the sweeper and the cap's eviction scan this set
        self.connections: set[_Connection] = set()
        self.per_client: dict[str, int] = {}
        self._cap_log = _RateLimitedLog()
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
        limits = self.limits
        timed = [t for t in (limits.header_timeout_s, limits.keep_alive_s) if t is not None]
        sweeper = self.loop.create_task(self._sweep(max(0.01, min(1.0, *(t / 4 for t in timed))))
                                        ) if timed else None
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

    # hostile clients ------------------------------------------------------------------------------

    async def _sweep(self, interval_s: float) -> None:
        """Every ``interval_s``: 408 for headers past ``header_timeout_s``, close connections idle
        past ``keep_alive_s`` (one pass over the connections: a few ms for 10,000)."""
        header_timeout_s, keep_alive_s = self.limits.header_timeout_s, self.limits.keep_alive_s
        while True:
            await asyncio.sleep(interval_s)
            now = self.loop.time()
            heads_from = now - header_timeout_s if header_timeout_s is not None else None
            idle_from = now - keep_alive_s if keep_alive_s is not None else None
            for conn in list(self.connections):
                if conn.active is not None or conn.discarding:
                    continue
                since = conn.head_since
                if since is not None:
                    if heads_from is not None and since <= heads_from:
                        conn.header_timeout()
                elif idle_from is not None and conn.idle_since <= idle_from:
                    conn.transport.close()

    def admit(self, conn: _Connection) -> bool:
        """Count a new connection against the caps; False when it was refused (and is closing)."""
        limits = self.limits
        address = conn.client[0] if conn.client is not None else None
        per_client = limits.max_connections_per_client
        if address is not None and per_client is not None:
            count = self.per_client.get(address, 0)
            if count >= per_client:
                self._cap_log.warning("per_client", (
                    f"connection cap: {address} already has {count} connections "
                    f"(http.max_connections_per_client {per_client}); refusing its new ones"))
                self._turn_away(conn, f"too many connections from {address} (at most {per_client})")
                return False
            self.per_client[address] = count + 1
            conn.counted = address
        total = limits.max_connections
        if total is not None and len(self.connections) >= total and not self._evict(total):
            self._cap_log.warning("total_refused", (
                f"connection cap: {len(self.connections)} connections, every one running a request "
                f"(http.max_connections {total}); refusing new ones"))
            if conn.counted is not None:
                self.release(conn.counted)
                conn.counted = None
            self._turn_away(conn, f"the server is at its connection limit ({total})")
            return False
        return True

    def _evict(self, total: int) -> bool:
        """Close the oldest connections without a running request, ``EVICT_SHARE`` of the cap at
        once (one scan per batch, not per new connection): those discarding input after a 431/408
        first, then those still sending headers, then idle ones. False when there is none."""
        now = self.loop.time()
        candidates: list[tuple[int, float, _Connection]] = []
        for conn in self.connections:
            if conn.active is None:
                if conn.discarding:
                    candidates.append((0, 0.0, conn))
                elif conn.head_since is not None:
                    candidates.append((1, conn.head_since, conn))
                else:
                    candidates.append((2, conn.idle_since, conn))
        if not candidates:
            return False
        victims = heapq.nsmallest(max(1, total // EVICT_SHARE), candidates, key=lambda c: c[:2])
        first = victims[0][2]
        state = ("discarding input after a refusal" if first.discarding else
                 "still sending headers" if first.head_since is not None else "idle")
        since = first.head_since if first.head_since is not None else first.idle_since
        self._cap_log.warning("total_evict", (
            f"connection cap: {len(self.connections)} connections (http.max_connections {total}); "
            f"closing the {len(victims)} oldest without a running request (the oldest from "
            f"{first.client[0] if first.client else 'a local socket'}, {state} for "
            f"{now - since:.1f} s) to admit new ones"))
        for _, _, victim in victims:
            self.connections.discard(victim)  # it no longer counts; its fd goes within a loop turn
            victim.transport.abort()
        return True

    def release(self, address: str) -> None:
        count = self.per_client.get(address, 0) - 1
        if count > 0:
            self.per_client[address] = count
        else:
            self.per_client.pop(address, None)

    @staticmethod
    def _turn_away(conn: _Connection, message: str) -> None:
        body = error_json(message, "too_many_connections")
        conn.transport.write(_status_line(503) + b"content-type: application/json\r\n"
                             b"retry-after: 1\r\nconnection: close\r\n"
                             b"content-length: %d\r\n\r\n" % len(body) + body)
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
