"""A predict that yields, in the instance's app: content types, chunk encoding, errors.

End-to-end streaming through the gateway (order, unbuffered, disconnects) is in test_proxy.py.
"""

from __future__ import annotations

from typing import Any

import httpx

import torpor
from torpor.runtime.app import ModelApp
from torpor.runtime.streaming import encode_chunk


def make_client(model: torpor.Model, concurrency: int = 1) -> httpx.AsyncClient:
    app = ModelApp(model, concurrency=concurrency)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://instance")


class TestChunks:
    def test_encoding(self) -> None:
        """str as UTF-8, bytes as they are, anything else one JSON document per line."""
        assert [encode_chunk(x) for x in ("é", b"\x00", {"a": [1]}, 3)] == [
            "é".encode(), b"\x00", b'{"a":[1]}\n', b"3\n"]


class TestResponses:
    async def test_sync_generator(self) -> None:
        """A synchronous generator's items arrive concatenated, typed by the first item."""
        class Count(torpor.Model):
            def predict(self, payload: Any) -> Any:
                for i in range(int(payload)):
                    yield f"{i},"

        async with make_client(Count()) as client:
            response = await client.post("/invoke", json=3)
        assert (response.status_code, response.text) == (200, "0,1,2,")
        assert response.headers["content-type"] == "text/plain; charset=utf-8"

    async def test_async_generator_bytes(self) -> None:
        """An async generator of bytes streams as application/octet-stream."""
        class Blobs(torpor.Model):
            async def predict(self, payload: Any) -> Any:
                yield b"\x01"
                yield b"\x02"

        async with make_client(Blobs()) as client:
            response = await client.post("/invoke")
        assert (response.content, response.headers["content-type"]) == (
            b"\x01\x02", "application/octet-stream")

    async def test_response_sets_status_headers_and_type(self) -> None:
        """Response(body=generator, ...) keeps its status, headers and content type."""
        class Accepted(torpor.Model):
            def predict(self, payload: Any) -> Any:
                return torpor.Response(body=iter(["data: 1\n\n"]), status=202,
                                       headers={"X-Stream": "yes"}, content_type="text/event-stream")

        async with make_client(Accepted()) as client:
            response = await client.post("/invoke")
        assert (response.status_code, response.text) == (202, "data: 1\n\n")
        assert (response.headers["content-type"], response.headers["x-stream"]) == (
            "text/event-stream", "yes")

    async def test_empty_stream(self) -> None:
        """A generator that yields nothing is an empty 200."""
        class Nothing(torpor.Model):
            def predict(self, payload: Any) -> Any:
                yield from ()

        async with make_client(Nothing()) as client:
            response = await client.post("/invoke")
        assert (response.status_code, response.content) == (200, b"")

    async def test_error_before_the_first_item_is_500(self, capsys: Any) -> None:
        """A generator that fails before yielding anything gets the usual JSON 500."""
        class Fails(torpor.Model):
            async def predict(self, payload: Any) -> Any:
                raise ValueError("no prompt")
                yield  # an async generator

        async with make_client(Fails()) as client:
            response = await client.post("/invoke")
        assert response.status_code == 500
        assert response.json() == {"error": "Fails.predict raised ValueError: no prompt",
                                   "reason": "handler_error",
                                   "function": None, "request_id": None}
        assert "Traceback" in capsys.readouterr().err
