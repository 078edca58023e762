"""OpenAI's API on the gateway's port: ``/v1/...`` routed by the body's ``model``.

A function serves OpenAI's API when its spec has an ``openai`` section; it is reached by its name or by
any of ``openai.models``. ``GET /v1/models`` lists those names. ``POST /v1/chat/completions``,
``/v1/completions`` and ``/v1/embeddings`` are forwarded unchanged (path and body) to an instance, so
a command function that already speaks OpenAI (vLLM, llama.cpp's server) works as it is, and a Model
handler answers through :class:`torpor.OpenAIModel`. Streams pass through unbuffered.

Errors are in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 404 for an unknown
model, 400 naming the field for a malformed body, and the gateway's own errors (503 queue full or cold
start failed, with ``Retry-After``; 504; 502) rewritten from torpor's shape on the way out.
An ``auth: key`` function needs its tenant's or an admin's API key as ``Authorization: Bearer KEY``
(401 ``invalid_api_key`` otherwise), and ``/v1/models`` lists only the models the key may call.

On the way out the door also counts, per function, generated tokens and the time to the first token
(:class:`LlmStats`, exported on ``/metrics``): from ``usage.completion_tokens`` of a whole response,
and one token per content event of a stream.
"""

from __future__ import annotations

import json
from typing import Any

from torpor.clock import Clock
from torpor.gateway.frontdoor import (
    AUTHENTICATE,
    UNAUTHORIZED,
    Access,
    Functions,
    Open,
    forward,
    read_body,
    reply,
    request_id_of,
)
from torpor.gateway.llm_stats import LlmStats
from torpor.gateway.proxy import Gateway
from torpor.types import Message, Receive, Scope, Send

POST_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error"}


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> bytes:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": param,
                                 "code": code}}).encode()


class OpenAIFrontDoor:
    def __init__(self, gateway: Gateway, functions: Functions, clock: Clock,
                 stats: LlmStats | None = None, access: Access | None = None) -> None:
        self.gateway = gateway
        self.functions = functions
        self.clock = clock
        self.stats = stats or LlmStats()
        self.access = access or Open()

    def models(self, scope: Scope | None = None) -> dict[str, str]:
        """Every model name a request may use → the function that serves it (names win over aliases);
        with ``scope``, only the functions its key may invoke (another tenant's are not listed)."""
        table: dict[str, str] = {}
        for name, fn in self.functions.items():
            if fn.spec.openai is not None and (scope is None or self.access.may_invoke(scope, name)):
                for alias in fn.spec.openai.models:
                    table.setdefault(alias, name)
        for name, fn in self.functions.items():
            if fn.spec.openai is not None and (scope is None or self.access.may_invoke(scope, name)):
                table[name] = name
        return table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        request_id = request_id_of(scope)
        if path in POST_PATHS and method == "POST":
            await self._forward(scope, receive, send, request_id)
        elif path == "/v1/models" and method == "GET":
            await reply(send, 200, json.dumps(self._list(scope)).encode(), request_id)
        elif path.startswith("/v1/models/") and method == "GET":
            model = path.removeprefix("/v1/models/")
            entry = next((m for m in self._list(scope)["data"] if m["id"] == model), None)
            if entry is None:
                await reply(send, 404, error_body(f"The model '{model}' does not exist", 404, "model",
                                                  "model_not_found"), request_id)
            else:
                await reply(send, 200, json.dumps(entry).encode(), request_id)
        else:
            await reply(send, 404, error_body(f"no route {method} {path} in torpor's OpenAI API", 404,
                                              None, "not_found"), request_id)

    def _list(self, scope: Scope) -> dict[str, Any]:
        data = []
        for model, name in sorted(self.models(scope).items()):
            data.append({"id": model, "object": "model", "owned_by": "torpor", "root": name,
                         "created": int(self.functions[name].created_at)})
        return {"object": "list", "data": data}

    async def _forward(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        body = await read_body(receive, self.gateway.max_body_bytes)
        if body is None:
            message = self.gateway.too_large_message()
            await reply(send, 413, error_body(message, 413, None, "body_too_large"), request_id)
            return
        try:
            document = json.loads(body)
        except ValueError as exc:
            await reply(send, 400, error_body(f"the request body is not valid JSON: {exc}", 400),
                        request_id)
            return
        model = document.get("model") if isinstance(document, dict) else None
        if not isinstance(model, str) or not model:
            message = "'model' is required and must be a non-empty string"
            await reply(send, 400, error_body(message, 400, "model"), request_id)
            return
        name = self.models().get(model)
        if name is None:
            message = f"The model '{model}' does not exist"
            fn = self.functions.get(model)
            if fn is not None:
                message += (f": function {model!r} does not serve OpenAI's API (add an `openai:` "
                            "section to its torpor.yaml)")
            await reply(send, 404, error_body(message, 404, "model", "model_not_found"), request_id)
            return
        if not self.access.admit(scope, name):
            await reply(send, 401, error_body(UNAUTHORIZED, 401, None, "invalid_api_key"), request_id,
                        [AUTHENTICATE])
            return
        out = _Outgoing(send, self.stats, name, self.clock, self.clock.now())
        await forward(self.gateway, name, self.functions[name].route, scope, body, receive, out,
                      request_id)


class _Outgoing:
    """``send`` for a forwarded request: error bodies in torpor's shape become OpenAI's; tokens and
    the time to the first one are counted."""

    __slots__ = ("arrived_at", "buffered", "clock", "error_start", "first_token", "function", "send",
                 "stats", "streaming")

    def __init__(self, send: Send, stats: LlmStats, function: str, clock: Clock,
                 arrived_at: float) -> None:
        self.send = send
        self.stats = stats
        self.function = function
        self.clock = clock
        self.arrived_at = arrived_at
        self.error_start: Message | None = None
        self.buffered: list[bytes] = []
        self.streaming = False
        self.first_token = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message["status"] >= 400:
                self.error_start = message  # sent once the whole body is known
                return
            self.streaming = any(k == b"content-type" and v.startswith(b"text/event-stream")
                                 for k, v in message["headers"])
            await self.send(message)
            return
        body: bytes = message.get("body", b"")
        if self.error_start is not None:
            self.buffered.append(body)
            if not message.get("more_body"):
                await self._send_error(self.error_start, b"".join(self.buffered))
            return
        if body:
            self._count(body, whole=not message.get("more_body") and not self.streaming)
        await self.send(message)

    def _count(self, body: bytes, whole: bool) -> None:
        now = self.clock.now()
        if whole:
            try:
                usage = json.loads(body).get("usage") or {}
                tokens = int(usage.get("completion_tokens", 0))
            except (ValueError, TypeError, AttributeError):
                return
            if tokens > 0:  # embeddings generate none
                self.stats.record(self.function, tokens, now - self.arrived_at)
            return
        # one token per content event: chat deltas and completion texts that are not empty
        tokens = body.count(b'"content":"') - body.count(b'"content":""')
        tokens += body.count(b'"text":"') - body.count(b'"text":""')
        if tokens <= 0:
            return
        ttft = None
        if not self.first_token:
            self.first_token = True
            ttft = now - self.arrived_at
        self.stats.record(self.function, tokens, ttft)

    async def _send_error(self, start: Message, body: bytes) -> None:
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict):  # already OpenAI's shape (a Model handler or vLLM)
            await self.send(start)
            await self.send({"type": "http.response.body", "body": body})
            return
        status: int = start["status"]
        message = str(error) if error is not None else body.decode("utf-8", errors="replace")[:500]
        code = document.get("reason") if isinstance(document, dict) else None
        headers = [(k, v) for k, v in start["headers"] if k not in (b"content-type", b"content-length")]
        headers.append((b"content-type", b"application/json"))
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": error_body(message, status, None, code)})
