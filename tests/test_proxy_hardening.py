"""The gateway under bad luck and bad input (issue 16): timeouts, dot segments, error shape."""

from __future__ import annotations

import asyncio

from test_proxy import Echo, Held, Stack, read_until, stack

__all__ = ["stack"]

ERROR_KEYS = {"error", "reason", "function", "request_id"}


class TestTimeoutKeepsTheSlot:
    async def test_timed_out_instance_stays_busy_until_it_finishes(self, stack: Stack) -> None:
        """After a 504 the instance's slot stays taken; the next request waits for it, not a 504."""
        held = Held()
        route = stack.route(timeout_s=0.2, queue_timeout_s=5)
        endpoint = await stack.instance(route, held, instance_id="fn-slow")
        assert stack.http is not None
        first = await stack.http.post("/fn/fn/invoke")
        assert first.status_code == 504
        assert set(first.json()) == ERROR_KEYS
        assert (first.headers["x-torpor-instance"], first.headers["x-torpor-start"]) == (
            "fn-slow", "warm")
        assert endpoint.in_flight == 1  # still running the first request
        second = asyncio.create_task(stack.http.post("/fn/fn/invoke"))
        await asyncio.sleep(0.05)
        assert route.queued == 1  # waits for free capacity instead of being sent to a busy instance
        held.release.set()
        response = await second
        assert (response.status_code, response.text) == (200, "done")

    async def test_instance_that_dies_after_a_timeout_frees_the_slot(self, stack: Stack) -> None:
        """A timed-out request whose instance then closes the connection releases the slot."""
        closing: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            closing.append(writer)

        path = str(stack.tmp_path / "silent.sock")
        server = await asyncio.start_unix_server(silent, path)
        route = stack.route(timeout_s=0.1)
        endpoint = stack.endpoint(route, path, 1, "fn-silent")
        assert stack.http is not None
        assert (await stack.http.post("/fn/fn/invoke")).status_code == 504
        assert endpoint.in_flight == 1
        closing[0].close()
        await stack.settled()
        assert endpoint.in_flight == 0
        server.close()


class TestDotSegments:
    async def test_dot_segments_are_refused(self, stack: Stack) -> None:
        """A path with ``..`` or ``.`` segments (also percent-encoded) never reaches an instance."""
        await stack.instance(stack.route(), Echo())
        for target in ("/fn/fn/../../etc/passwd", "/fn/fn/a/./b", "/fn/fn/%2e%2e/x",
                       "/fn/fn/a/%2E%2e"):
            reader, writer = await asyncio.open_unix_connection(stack.path)
            writer.write(f"POST {target} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n\r\n".encode())
            head = await read_until(reader, b"\r\n\r\n")
            writer.close()
            assert head.startswith(b"HTTP/1.1 400"), (target, head)

    async def test_plain_paths_still_pass(self, stack: Stack) -> None:
        """Dots inside a segment name are fine."""
        await stack.instance(stack.route(), Echo())
        assert stack.http is not None
        response = await stack.http.post("/fn/fn/invoke..x", json=1)
        assert response.status_code == 404  # the runtime's own answer: it was forwarded


class TestErrorShapePerStatus:
    async def answer(self, stack: Stack, target: str = "/fn/fn/invoke",
                     content: bytes = b"{}") -> tuple[int, dict[str, str], dict[str, object]]:
        assert stack.http is not None
        response = await stack.http.post(target, content=content,
                                         headers={"x-request-id": "req-1"})
        body = response.json()
        assert tuple(body) == ("error", "reason", "function", "request_id"), body
        assert body["request_id"] == "req-1" == response.headers["x-torpor-request-id"]
        return response.status_code, dict(response.headers), body

    async def test_404_unknown_function(self, stack: Stack) -> None:
        """404 names the function."""
        status, _, body = await self.answer(stack, "/fn/nope/invoke")
        assert (status, body["reason"], body["function"]) == (404, "not_found", "nope")

    async def test_503_queue_full(self, stack: Stack) -> None:
        """A full queue is a 503 with Retry-After."""
        stack.route(max_queued=0)
        status, headers, body = await self.answer(stack)
        assert (status, body["reason"], body["function"]) == (503, "queue_full", "fn")
        assert headers["retry-after"] == "1"

    async def test_504_queue_timeout(self, stack: Stack) -> None:
        """No instance in time is a 504."""
        stack.route(queue_timeout_s=0.05)
        status, _, body = await self.answer(stack)
        assert (status, body["reason"]) == (504, "queue_timeout")

    async def test_502_instance_failed_names_the_instance(self, stack: Stack) -> None:
        """A 502 carries the instance that failed."""
        route = stack.route()
        stack.endpoint(route, str(stack.tmp_path / "a.sock"), 1, "fn-a")
        stack.endpoint(route, str(stack.tmp_path / "b.sock"), 1, "fn-b")
        status, headers, body = await self.answer(stack)
        assert (status, body["reason"]) == (502, "instance_failed")
        assert headers["x-torpor-instance"] in ("fn-a", "fn-b")

    async def test_500_and_400_from_the_instance(self, stack: Stack) -> None:
        """The runtime's own errors (500, 400) come in the same shape with the request id."""

        class Fails(Echo):
            def predict(self, payload: object) -> object:
                raise ValueError("nope")

        await stack.instance(stack.route(), Fails())
        status, _, body = await self.answer(stack)
        assert (status, body["reason"]) == (500, "handler_error")
        status, _, body = await self.answer(stack, content=b'{"a":')
        assert (status, body["reason"]) == (400, "bad_request")
