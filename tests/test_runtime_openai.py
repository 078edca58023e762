"""torpor.OpenAIModel in the instance's app: responses, SSE framing, usage, max_tokens and stop."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import torpor
from torpor.runtime.app import ModelApp
from torpor.runtime.openai import DONE, Stopper, sse

PIECES = ["Hel", "lo", ",", " wor", "ld", "!"]


class Scripted(torpor.OpenAIModel):
    """Yields PIECES (one per token) and remembers what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, torpor.GenerationParams]] = []
        self.closed = 0

    def generate(self, messages: list[dict[str, str]], params: torpor.GenerationParams) -> Iterator[str]:
        self.calls.append((messages, params))
        params.prompt_tokens = 3 * len(messages)
        try:
            yield from PIECES
        finally:
            self.closed += 1

    def complete(self, prompt: str, params: torpor.GenerationParams) -> Iterator[str]:
        params.prompt_tokens = len(prompt)
        yield from PIECES

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(t)), 0.5, -1.0] for t in texts]


class Refusing(torpor.OpenAIModel):
    def generate(self, messages: list[dict[str, str]], params: torpor.GenerationParams) -> Iterator[str]:
        raise torpor.OpenAIError("too long", param="messages", code="context_length_exceeded")


def client(model: torpor.Model) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=ModelApp(model)), base_url="http://i")


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {"model": "alias", "messages": [{"role": "user", "content": "hi"}], **overrides}


def events(text: str) -> list[Any]:
    """Split an SSE body into its data payloads (JSON decoded, [DONE] kept as a string)."""
    assert text.endswith("\n\n")
    out: list[Any] = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


class TestChat:
    async def test_whole_response(self) -> None:
        """A non-streamed chat completion carries the text, finish_reason, usage and the asked model."""
        model = Scripted()
        async with client(model) as c:
            r = await c.post("/v1/chat/completions", json=chat_body(temperature=0, seed=7, top_p=0.9))
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == "alias"
        assert body["id"].startswith("chatcmpl-")
        assert body["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "Hello, world!"}}]
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
        params = model.calls[0][1]
        assert (params.temperature, params.seed, params.top_p) == (0.0, 7, 0.9)

    async def test_max_tokens_is_length(self) -> None:
        """max_tokens pieces at most; the generator is closed; finish_reason 'length'."""
        model = Scripted()
        async with client(model) as c:
            r = await c.post("/v1/chat/completions", json=chat_body(max_completion_tokens=3))
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] == "Hello,"
        assert choice["finish_reason"] == "length"
        assert r.json()["usage"]["completion_tokens"] == 3
        assert model.closed == 1

    async def test_stop_across_pieces(self) -> None:
        """A stop string spanning pieces cuts the text before it; finish_reason 'stop'."""
        async with client(Scripted()) as c:
            r = await c.post("/v1/chat/completions", json=chat_body(stop=["o, w", "zzz"]))
        assert r.json()["choices"][0]["message"]["content"] == "Hell"
        assert r.json()["choices"][0]["finish_reason"] == "stop"

    async def test_model_error_in_openai_shape(self) -> None:
        """An OpenAIError raised by generate is answered with its status and fields."""
        async with client(Refusing()) as c:
            r = await c.post("/v1/chat/completions", json=chat_body())
        assert r.status_code == 400
        assert r.json() == {"error": {"message": "too long", "type": "invalid_request_error",
                                      "param": "messages", "code": "context_length_exceeded"}}

    async def test_bad_field(self) -> None:
        """A malformed body is a 400 naming the field."""
        async with client(Scripted()) as c:
            r = await c.post("/v1/chat/completions", json=chat_body(max_tokens=-1))
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"

    async def test_unsupported_endpoint(self) -> None:
        """A model without embed() answers /v1/embeddings with a 404 in OpenAI's shape."""
        async with client(Refusing()) as c:
            r = await c.post("/v1/embeddings", json={"model": "m", "input": "x"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unsupported"


class TestStreaming:
    async def test_sse_framing(self) -> None:
        """Role chunk, one chunk per piece, the finish chunk, the usage chunk, then [DONE]."""
        async with client(Scripted()) as c:
            r = await c.post("/v1/chat/completions",
                             json=chat_body(stream=True, stream_options={"include_usage": True}))
        assert r.headers["content-type"] == "text/event-stream"
        chunks = events(r.text)
        assert chunks[-1] == "[DONE]"
        first, *middle, finish, usage, _ = chunks
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert [m["choices"][0]["delta"]["content"] for m in middle] == PIECES
        assert all(m["object"] == "chat.completion.chunk" and m["id"] == first["id"] for m in middle)
        assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}

    async def test_stream_length_without_usage(self) -> None:
        """Without include_usage no chunk carries a usage key; max_tokens ends with 'length'."""
        async with client(Scripted()) as c:
            r = await c.post("/v1/chat/completions", json=chat_body(stream=True, max_tokens=2))
        chunks = events(r.text)
        assert all("usage" not in c for c in chunks[:-1])
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == "Hello"
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"

    async def test_completions_stream(self) -> None:
        """/v1/completions streams text_completion chunks with the text pieces."""
        async with client(Scripted()) as c:
            r = await c.post("/v1/completions", json={"model": "m", "prompt": "Say", "stream": True})
        chunks = events(r.text)
        assert all(c["object"] == "text_completion" for c in chunks[:-1])
        assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "Hello, world!"
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"

    def test_sse_event(self) -> None:
        """One event: 'data: ' + compact JSON + a blank line."""
        assert sse({"a": [1, 2]}) == b'data: {"a":[1,2]}\n\n'
        assert DONE == b"data: [DONE]\n\n"


class TestEmbeddings:
    async def test_float_and_base64(self) -> None:
        """Vectors as floats, or as base64 of little-endian float32 (what OpenAI's client asks for)."""
        async with client(Scripted()) as c:
            plain = (await c.post("/v1/embeddings", json={"model": "e", "input": ["ab", "abc"]})).json()
            packed = (await c.post("/v1/embeddings", json={"model": "e", "input": ["ab"],
                                                           "encoding_format": "base64"})).json()
        assert plain["object"] == "list" and plain["model"] == "e"
        assert [d["embedding"] for d in plain["data"]] == [[2.0, 0.5, -1.0], [3.0, 0.5, -1.0]]
        assert [d["index"] for d in plain["data"]] == [0, 1]
        raw = base64.b64decode(packed["data"][0]["embedding"])
        assert struct.unpack("<3f", raw) == (2.0, 0.5, -1.0)


class TestStopper:
    @pytest.mark.parametrize(("stop", "expected"), [
        ((), "Hello, world!"), (("!",), "Hello, world"), (("Hello",), ""), (("ld!x",), "Hello, world!"),
    ])
    def test_cuts(self, stop: tuple[str, ...], expected: str) -> None:
        """Text up to the first stop string, or all of it; held-back text is released at the end."""
        params = torpor.GenerationParams(max_tokens=100, stop=stop)
        assert "".join(Stopper(iter(PIECES), params)) == expected

    def test_empty_pieces_count_as_tokens(self) -> None:
        """A token that yields no text (mid-character) still counts against max_tokens."""
        stopper = Stopper(iter(["", "", "a", "b"]), torpor.GenerationParams(max_tokens=3))
        assert list(stopper) == ["a"]
        assert stopper.tokens == 3 and stopper.finish_reason == "length"
