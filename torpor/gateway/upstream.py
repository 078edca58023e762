"""Kept-alive HTTP/1.1 connections from the gateway to one instance (Unix socket or TCP).

The data plane speaks to instances through :meth:`UpstreamClient.request`: a pool of idle
connections, one ``write()`` per request, responses parsed by httptools straight into an
:class:`UpstreamResponse` that the gateway streams back. It replaced an aiohttp session on the hot
path (bench/gateway.py measured aiohttp's request machinery at about half of the gateway's CPU per
request). Control calls that are not on the hot path (``/initialize``, idle-mode hooks) still use the
aiohttp :attr:`UpstreamClient.session`, created on first use.

Errors, by what the gateway may do about them:

    UpstreamError
    ├── ConnectFailed     no connection could be made: nothing reached the instance, safe to retry
    ├── UpstreamBroken    the connection broke after the request was written (never replayed)
    └── UpstreamTimedOut  no response head, or no next chunk, within the timeout
"""

from __future__ import annotations

import asyncio
from collections import deque

import aiohttp
import httptools

from torpor.address import Address

READ_HIGH_WATER_BYTES = 1024 * 1024  # stop reading an instance this far ahead of a slow client
_SKIP_AUTO = frozenset({"User-Agent", "Accept-Encoding", "Content-Type"})


class UpstreamError(Exception):
    """A request to an instance did not produce a complete response."""


class ConnectFailed(UpstreamError):
    """No connection: the request never reached the instance."""


class UpstreamBroken(UpstreamError):
    """The instance closed the connection or sent garbage after it got the request."""


class UpstreamTimedOut(UpstreamError):
    """The instance did not answer (or send the next chunk) in time.

    ``settled`` (set when no response head came in time) is done once the instance has really
    finished that request (its late response arrived and was dropped, or the connection broke): until
    then the instance is still busy with it, so its slot stays taken.
    """

    def __init__(self, message: str, settled: asyncio.Future[None] | None = None) -> None:
        super().__init__(message)
        self.settled = settled


class UpstreamResponse:
    """Status and headers of an instance's response, and its body as it arrives.

    ``complete`` is True once the whole body is buffered (the usual case for a small response, which
    arrives in the same read as its head): then :meth:`body` returns it. Otherwise :meth:`read`
    returns the next chunk, ``b""`` at the end. :meth:`abort` gives up on the rest (a client that went
    away): the connection is closed, not reused.
    """

    __slots__ = ("_buffered", "_chunks", "_conn", "_error", "_timeout_s", "_waiter", "complete", "headers",
                 "status")

    def __init__(self, conn: _Connection, status: int, headers: list[tuple[bytes, bytes]],
                 timeout_s: float) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self.complete = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timeout_s = timeout_s

    def body(self) -> bytes:
        """The whole body of a complete response."""
        chunks = self._chunks
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def read(self) -> bytes:
        """The next chunk of the body; ``b""`` once it is all read."""
        if not self._chunks and not self.complete and self._error is None:
            loop = self._conn.loop
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(self._timeout_s, self._timed_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self._chunks:
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            if self._buffered < READ_HIGH_WATER_BYTES:
                self._conn.resume_reading()
            return chunk
        if self._error is not None:
            raise self._error
        return b""

    def abort(self) -> None:
        """Stop reading this response; its connection is closed."""
        if not self.complete:
            self._conn.close()
            self._fail(UpstreamBroken("response aborted"))

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._fail(UpstreamTimedOut(f"no data from the instance for {self._timeout_s:g}s"))
            self._conn.close()

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()
        if self._buffered > READ_HIGH_WATER_BYTES:
            self._conn.pause_reading()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self.complete:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """One kept-alive connection; carries one request at a time."""

    def __init__(self, client: UpstreamClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reading_paused = False
        self.head: asyncio.Future[UpstreamResponse] | None = None
        self.response: UpstreamResponse | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timeout_s = 0.0
        self.head_only = False
        self.abandoned: asyncio.Future[None] | None = None  # a timed-out request still running
        self._headers: list[tuple[bytes, bytes]] = []

    def send(self, data: bytes, timeout_s: float, head_only: bool) -> asyncio.Future[UpstreamResponse]:
        self.head = head = self.loop.create_future()
        self.response = None
        self.timeout_s = timeout_s
        self.head_only = head_only
        self._headers = []
        self.timer = self.loop.call_later(timeout_s, self._head_timed_out)
        self.transport.write(data)
        return head

    # transport callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        detail = f": {exc}" if exc is not None else ""
        self._fail(UpstreamBroken(f"the instance closed the connection{detail}"))
        self._settle()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"the instance sent a malformed response: {exc}"))
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client._forget(self)
            self.transport.close()
            self._settle()

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def _fail(self, error: UpstreamError) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        head = self.head
        if head is not None and not head.done():
            head.set_exception(error)
        elif self.response is not None:
            self.response._fail(error)

    def _head_timed_out(self) -> None:
        # The instance still works on the request: keep the connection open and wait for its late
        # answer (dropped), so the caller can hold the instance's slot until it is really free.
        self.timer = None
        self.abandoned = self.loop.create_future()
        self._fail(UpstreamTimedOut(f"no response within {self.timeout_s:g}s", self.abandoned))

    def _settle(self) -> None:
        abandoned, self.abandoned = self.abandoned, None
        if abandoned is not None and not abandoned.done():
            abandoned.set_result(None)

    # parser callbacks ------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim response (100 Continue): the real one follows
            self._headers = []
            return
        response = UpstreamResponse(self, status, self._headers, self.timeout_s)
        self.response = response
        head = self.head
        if head is not None and not head.done():
            head.set_result(response)
        if self.head_only:  # a response to HEAD has no body, whatever its content-length says
            response._finish()
            self.close()

    def on_body(self, body: bytes) -> None:
        if self.response is not None and self.abandoned is None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        if response is None or response.complete:
            return
        response._finish()
        if self.parser.should_keep_alive() and not self.closed:
            self.resume_reading()
            self.client._idle.append(self)
            self._settle()
        else:
            self.close()


class UpstreamClient:
    """Pooled keep-alive connections to one instance; ``base`` is the URL prefix for control calls."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.base = address.base_url
        self._host = address.authority.encode()
        self._idle: list[_Connection] = []
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def session(self) -> aiohttp.ClientSession:
        """An aiohttp session for control calls (``/initialize``, hooks); not used on the hot path."""
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self.address.unix_socket is not None:
                connector = aiohttp.UnixConnector(path=self.address.unix_socket, limit=0)
            else:
                connector = aiohttp.TCPConnector(limit=0, use_dns_cache=False)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=_SKIP_AUTO,
                timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def control(self, path: str, timeout_s: float) -> tuple[int, str]:
        """``POST path`` with an empty body (``/initialize``, idle-mode hooks): status and body text.

        Raises ``TimeoutError`` past ``timeout_s`` and :class:`ConnectFailed` when the instance
        cannot be reached or breaks the connection.
        """
        try:
            async with self.session.post(
                self.base + path, data=b"", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                return response.status, await response.text(errors="replace")
        except aiohttp.ClientError as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None

    async def request(
        self, method: str, target: bytes, header_lines: bytes, body: bytes, timeout_s: float
    ) -> UpstreamResponse:
        """Send one request; returns once the response head has arrived.

        ``header_lines`` are complete ``name: value\\r\\n`` lines, without host, content-length or
        any hop-by-hop header. Raises :class:`ConnectFailed` when no connection could be made (the
        only failure after which the request may be retried elsewhere).
        """
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            conn = await self._connect()
        data = b"".join((method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", self._host,
                         b"\r\n", header_lines, b"content-length: %d\r\n\r\n" % len(body), body))
        return await conn.send(data, timeout_s, method == "HEAD")

    async def _connect(self) -> _Connection:
        if self._closed:
            raise ConnectFailed("the instance is gone")
        loop = asyncio.get_running_loop()
        try:
            address = self.address
            if address.unix_socket is not None:
                _, conn = await loop.create_unix_connection(lambda: _Connection(self, loop),
                                                            address.unix_socket)
            else:
                assert address.host is not None and address.port is not None
                _, conn = await loop.create_connection(lambda: _Connection(self, loop),
                                                       address.host, address.port)
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to the instance: {exc}") from None
        return conn

    def _forget(self, conn: _Connection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._session is not None:
            await self._session.close()

    def __repr__(self) -> str:
        return f"UpstreamClient({str(self.address)!r})"
