"""The OpenAI front door's own parts: the model table, errors rewritten into OpenAI's shape, counting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from torpor.clock import FakeClock
from torpor.gateway.llm_stats import LlmStats
from torpor.gateway.openai import OpenAIFrontDoor, _Outgoing
from torpor.gateway.proxy import Gateway
from torpor.gateway.route import FunctionRoute
from torpor.spec import FunctionSpec
from torpor.types import Message


def make_spec(name: str, **overrides: Any) -> FunctionSpec:
    return FunctionSpec.model_validate({"name": name, "runtime": {"command": ["x"]}, **overrides})


@dataclass
class Fn:
    spec: FunctionSpec
    route: FunctionRoute
    created_at: float = 100.0


def make_door(*specs: FunctionSpec) -> OpenAIFrontDoor:
    clock = FakeClock()
    functions = {s.name: Fn(s, FunctionRoute(s.name, clock=clock, max_queued=0, queue_timeout_s=1,
                                            timeout_s=1)) for s in specs}
    routes = {name: fn.route for name, fn in functions.items()}
    return OpenAIFrontDoor(Gateway(routes, clock), functions, clock)


class Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


class TestModelTable:
    def test_names_and_aliases(self) -> None:
        """Functions with an openai section answer to their name and aliases; a name beats an alias."""
        door = make_door(make_spec("chat", openai={"models": ["smol", "embed"]}),
                         make_spec("embed", openai={}), make_spec("plain"))
        assert door.models() == {"chat": "chat", "smol": "chat", "embed": "embed"}

    async def test_list_and_unknown(self) -> None:
        """GET /v1/models lists them; an unknown model is a 404 model_not_found in OpenAI's shape."""
        door = make_door(make_spec("chat", openai={"models": ["smol"]}), make_spec("plain"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://g") as c:
            listed = (await c.get("/v1/models")).json()
            missing = await c.post("/v1/chat/completions", json={"model": "gpt", "messages": []})
            plain = await c.post("/v1/chat/completions", json={"model": "plain", "messages": []})
            broken = await c.post("/v1/chat/completions", content=b"{not json")
            no_model = await c.post("/v1/embeddings", json={"input": "x"})
        assert [m["id"] for m in listed["data"]] == ["chat", "smol"]
        assert listed["data"][1] == {"id": "smol", "object": "model", "owned_by": "torpor",
                                     "root": "chat", "created": 100}
        assert missing.status_code == 404
        assert missing.json() == {"error": {"message": "The model 'gpt' does not exist",
                                            "type": "invalid_request_error", "param": "model",
                                            "code": "model_not_found"}}
        assert "does not serve OpenAI's API" in plain.json()["error"]["message"]
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
        assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"

    async def test_overload_is_503_with_retry_after(self) -> None:
        """With no instance and no queue room, the gateway's 503 arrives in OpenAI's shape."""
        door = make_door(make_spec("chat", openai={}))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=door), base_url="http://g") as c:
            r = await c.post("/v1/chat/completions", json={"model": "chat", "messages": []})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        error = r.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "queue_full")
        assert "queue.max_queued" in error["message"]


class TestOutgoing:
    async def test_openai_shaped_error_passes(self) -> None:
        """An error body already in OpenAI's shape (the instance's) passes unchanged."""
        sent = Sent()
        out = _Outgoing(sent, LlmStats(), "chat", FakeClock(), 0.0)
        body = {"error": {"message": "m", "type": "invalid_request_error", "param": "x", "code": None}}
        await out({"type": "http.response.start", "status": 400, "headers": []})
        await out({"type": "http.response.body", "body": json.dumps(body).encode()})
        assert sent.status == 400 and sent.body == body

    async def test_counts_whole_and_streamed_tokens(self) -> None:
        """usage.completion_tokens of a whole response; one token per non-empty content event."""
        clock = FakeClock()
        stats = LlmStats()
        out = _Outgoing(Sent(), stats, "chat", clock, 0.0)
        await out({"type": "http.response.start", "status": 200, "headers": []})
        clock.advance(0.5)
        await out({"type": "http.response.body", "body": b'{"usage":{"completion_tokens":7}}'})
        stream = _Outgoing(Sent(), stats, "chat", clock, clock.now())
        await stream({"type": "http.response.start", "status": 200,
                      "headers": [(b"content-type", b"text/event-stream")]})
        await stream({"type": "http.response.body", "more_body": True,
                      "body": b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'})
        clock.advance(0.2)
        for _ in range(3):
            await stream({"type": "http.response.body", "more_body": True,
                          "body": b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'})
        chat = stats.by_function["chat"]
        assert chat.tokens == 10
        assert chat.ttft_count == 2
        assert abs(chat.ttft_sum_s - 0.7) < 1e-9
