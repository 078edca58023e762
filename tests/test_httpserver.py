"""The lean HTTP/1.1 server under real sockets: framing, keep-alive, pipelining, disconnects, errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from torpor.httpserver import ClientDisconnected, HttpServer, Limits
from torpor.types import Message, Receive, Scope, Send

App = Callable[[Scope, Receive, Send], Awaitable[None]]
Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Start an HttpServer for an app on a Unix socket in this event loop; stopped at the end."""
    running: list[tuple[HttpServer, asyncio.Task[None]]] = []

    async def start(app: App, **kwargs: Any) -> str:
        path = str(tmp_path / f"s{len(running)}.sock")
        server = HttpServer(app, **kwargs)
        task = asyncio.create_task(server.serve(uds=path))
        while not server.started:
            await asyncio.sleep(0.001)
        running.append((server, task))
        return path

    yield start
    for server, task in running:
        server.handle_exit()
        await asyncio.wait_for(task, 10)


async def exchange(path: str, raw: bytes, until: bytes = b"", read_s: float = 2.0) -> bytes:
    """Send raw bytes, read until ``until`` has been seen (or the server closes)."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(raw)
    data = b""
    try:
        while until not in data or not until:
            chunk = await asyncio.wait_for(reader.read(65536), read_s)
            if not chunk:
                break
            data += chunk
            if until and until in data:
                break
    finally:
        writer.close()
    return data


def request(path: str = "/", body: bytes = b"", method: str = "POST", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = f"{scope['method']} {scope['path']} {scope['query_string'].decode()} ".encode() + body
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
    await send({"type": "http.response.body", "body": out})


class TestFraming:
    async def test_one_message_body_gets_content_length(self, serve: Serve) -> None:
        """A response sent in one body message is framed with its exact content-length."""
        path = await serve(echo)
        data = await exchange(path, request("/p%20q?x=1", b"hi"), until=b"hi")
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        lines = head.split(b"\r\n")
        assert b"content-length: 16" in lines and b"x-a: 1" in lines
        assert body == b"POST /p q x=1 hi"

    async def test_streamed_body_is_chunked(self, serve: Serve) -> None:
        """Several body messages go out chunked, in order, ending with the zero chunk."""
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"a", b"bb", b"ccc"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        data = await exchange(await serve(app), request(), until=b"0\r\n\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        assert body == b"1\r\na\r\n2\r\nbb\r\n3\r\nccc\r\n0\r\n\r\n"

    async def test_head_has_no_body(self, serve: Serve) -> None:
        """A response to HEAD keeps its headers and sends no body bytes."""
        data = await exchange(await serve(echo), request(method="HEAD"), until=b"\r\n\r\n")
        assert data.endswith(b"\r\n\r\n") and b"content-length" in data

    async def test_large_request_body_arrives_whole(self, serve: Serve) -> None:
        """A body far above the read high-water mark is delivered complete (reading pauses, resumes)."""
        body = b"x" * (3 * 1024 * 1024)

        async def size(scope: Scope, receive: Receive, send: Send) -> None:
            total = 0
            while True:
                message = await receive()
                total += len(message["body"])
                if not message["more_body"]:
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(total).encode()})

        data = await exchange(await serve(size), request(body=body), until=str(len(body)).encode())
        assert data.endswith(str(len(body)).encode())


class TestConnections:
    async def test_keep_alive_and_pipelining_answer_in_order(self, serve: Serve) -> None:
        """Two requests written at once on one connection are answered in order on it."""
        path = await serve(echo)
        data = await exchange(path, request("/one", b"1") + request("/two", b"2"), until=b"/two  2")
        assert data.index(b"/one  1") < data.index(b"/two  2")
        assert data.count(b"HTTP/1.1 200 OK") == 2

    async def test_connection_close_is_honoured(self, serve: Serve) -> None:
        """A client that asks for connection: close gets it, and the server closes."""
        data = await exchange(await serve(echo), request(extra="connection: close\r\n"))
        assert b"connection: close" in data and data.endswith(b"POST /  ")

    async def test_expect_continue(self, serve: Serve) -> None:
        """A client that sends Expect: 100-continue is told to continue before the app reads the body."""
        path = await serve(echo)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        writer.write(b"ok")
        rest = await asyncio.wait_for(reader.readuntil(b"POST /  ok"), 2)
        writer.close()
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n" and rest.startswith(b"HTTP/1.1 200 OK")

    async def test_malformed_request_is_400(self, serve: Serve) -> None:
        """Garbage on the wire gets a 400 and the connection closed."""
        data = await exchange(await serve(echo), b"NOT HTTP AT ALL\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 400 Bad Request")

    async def test_idle_keep_alive_connections_are_closed(self, serve: Serve) -> None:
        """With keep_alive_s, a connection idle that long is closed by the server."""
        path = await serve(echo, limits=Limits(keep_alive_s=0.05))
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(request())
        await reader.readuntil(b"POST /  ")
        assert await asyncio.wait_for(reader.read(), 3) == b""  # EOF: closed by the server
        writer.close()


class TestDisconnects:
    async def test_receive_reports_disconnect_and_send_raises(self, serve: Serve) -> None:
        """When the client leaves mid-response, receive() says http.disconnect and send() raises."""
        seen: list[Any] = []
        done = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            seen.append((await asyncio.wait_for(receive(), 2))["type"])
            try:
                await send({"type": "http.response.body", "body": b"more", "more_body": True})
            except ClientDisconnected:
                seen.append("raised")
            done.set()

        path = await serve(app)
        await exchange(path, request(), until=b"first")
        await asyncio.wait_for(done.wait(), 2)
        assert seen == ["http.disconnect", "raised"]

    async def test_receive_after_complete_response_is_disconnect(self, serve: Serve) -> None:
        """After the response is complete, receive() returns http.disconnect without waiting."""
        seen: list[Message] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            seen.append(await asyncio.wait_for(receive(), 1))

        await exchange(await serve(app), request(), until=b"\r\n\r\n")
        await asyncio.sleep(0.01)
        assert seen == [{"type": "http.disconnect"}]


class TestErrors:
    async def test_exception_before_response_is_500(self, serve: Serve, caplog: Any) -> None:
        """An app that raises before answering gets a 500 and a logged traceback."""
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            raise RuntimeError("boom")

        data = await exchange(await serve(app), request())
        assert data.startswith(b"HTTP/1.1 500 Internal Server Error")
        assert "boom" in caplog.text

    async def test_no_response_is_500(self, serve: Serve) -> None:
        """An app that returns without answering still gets the client a 500."""
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            return None

        data = await exchange(await serve(app), request())
        assert data.startswith(b"HTTP/1.1 500 Internal Server Error")

    async def test_exception_mid_stream_breaks_the_connection(self, serve: Serve) -> None:
        """An app that raises after the response started leaves it unterminated (no zero chunk)."""
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("lost the device")

        data = await exchange(await serve(app), request())
        assert b"4\r\npart\r\n" in data and not data.endswith(b"0\r\n\r\n")


class TestLifespan:
    async def test_startup_and_shutdown_run(self, tmp_path: Path) -> None:
        """The app's lifespan startup runs before serving and shutdown when the server stops."""
        events: list[str] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            assert scope["type"] == "lifespan"
            while True:
                message = await receive()
                events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return

        server = HttpServer(app, lifespan=True)
        task = asyncio.create_task(server.serve(uds=str(tmp_path / "l.sock")))
        while not server.started:
            await asyncio.sleep(0.001)
        assert events == ["lifespan.startup"]
        server.handle_exit()
        await asyncio.wait_for(task, 5)
        assert events == ["lifespan.startup", "lifespan.shutdown"]

    async def test_failed_startup_does_not_serve(self, tmp_path: Path) -> None:
        """A lifespan startup that fails leaves the server not started."""
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})

        server = HttpServer(app, lifespan=True)
        await asyncio.wait_for(server.serve(uds=str(tmp_path / "f.sock")), 5)
        assert server.started is False


class TestHostileClients:
    async def test_eviction_order_at_the_total_cap(self, serve: Serve) -> None:
        """max_connections 3: a new connection closes the oldest half-sent one, else the oldest
        idle one; with every connection running a request it is refused with 503, and no running
        request is ever cut."""
        release = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            if scope["path"] == "/wait":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": scope["path"].encode()})

        async def answered(conn: Any, path: bytes) -> bool:
            return (await asyncio.wait_for(conn[0].readuntil(path), 5)).startswith(b"HTTP/1.1 200 OK")

        async def closed(conn: Any) -> bool:
            return await asyncio.wait_for(conn[0].read(), 5) == b""

        path = await serve(app, limits=Limits(max_connections=3))
        running = await asyncio.open_unix_connection(path)
        running[1].write(request("/wait"))
        idle = await asyncio.open_unix_connection(path)
        idle[1].write(request("/idle"))
        assert await answered(idle, b"/idle")
        half = await asyncio.open_unix_connection(path)
        half[1].write(b"GET / HTTP/1.1\r\nhost:")
        await asyncio.sleep(0.05)

        fourth = await asyncio.open_unix_connection(path)  # evicts the half-sent one, not the idle one
        assert await closed(half)
        fourth[1].write(request("/fourth"))
        assert await answered(fourth, b"/fourth")
        fifth = await asyncio.open_unix_connection(path)  # evicts the oldest idle one
        assert await closed(idle)
        fifth[1].write(request("/wait"))
        sixth = await asyncio.open_unix_connection(path)  # evicts the other idle one
        assert await closed(fourth)
        sixth[1].write(request("/wait"))
        await asyncio.sleep(0.05)
        seventh = await asyncio.open_unix_connection(path)  # all three run a request: refused
        refused = await asyncio.wait_for(seventh[0].read(), 5)
        assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b'"reason": "too_many_connections"' in refused
        release.set()
        for conn in (running, fifth, sixth):
            assert await answered(conn, b"/wait")
        for conn in (running, idle, half, fourth, fifth, sixth, seventh):
            conn[1].close()

    async def test_header_bound_counts_each_request(self, serve: Serve) -> None:
        """max_header_bytes 2048: pipelined requests of 1.5 KiB headers each, sent in one write,
        are all answered, in order; one of 3 KiB after them gets 431 once they are, and the
        connection is closed."""
        path = await serve(echo, limits=Limits(max_header_bytes=2048))
        pad = "x-pad: " + "p" * 1500 + "\r\n"
        raw = b"".join(request(f"/{i}", extra=pad) for i in range(5))
        raw += request("/big", extra="x-pad: " + "q" * 3000 + "\r\n")
        data = await exchange(path, raw, until=b"headers_too_large")
        assert re.findall(rb"HTTP/1.1 (\d+)", data) == [b"200"] * 5 + [b"431"]
        assert re.findall(rb"POST /(\w+) ", data) == [b"0", b"1", b"2", b"3", b"4"]
