"""The ASGI app an instance serves: ``POST /invoke`` (also ``POST /``), ``POST /initialize``,
``GET /healthz``.

A synchronous ``predict`` runs inline when the instance takes one request at a time (no thread hop on
the hot path) and on a thread pool sized to ``concurrency`` otherwise; an ``async def predict`` is
awaited. A ``predict`` that yields streams (:mod:`torpor.runtime.streaming`); a Model with
``max_batch_size`` above 1 has its requests gathered into batches (:mod:`torpor.runtime.batching`).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torpor.runtime import oip
from torpor.runtime import openai as openai_api
from torpor.runtime.batching import Batcher, BatchFailed
from torpor.runtime.codec import BadPayload, decode_body, encode_result, error_body
from torpor.runtime.streaming import is_stream, stream
from torpor.sdk import Model, Response, _request_id
from torpor.types import Receive, Scope, Send

_JSON_HEADERS = [(b"content-type", b"application/json")]


class ModelApp:
    def __init__(
        self, model: Model, concurrency: int = 1, timings: dict[str, float] | None = None
    ) -> None:
        self.model = model
        self.function = os.environ.get("TORPOR_FUNCTION")  # named in every error body
        self.timings = timings if timings is not None else {}
        self._async = inspect.iscoroutinefunction(model.predict)
        self._pool = (
            ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="predict")
            if concurrency > 1 and not self._async
            else None
        )
        # protocol front doors (OpenAI /v1, Open Inference Protocol /v2) a Model may answer
        self._routes = openai_api.routes(model) if isinstance(model, openai_api.OpenAIModel) else {}
        self._initialized = False
        self._init_lock = asyncio.Lock()
        self._batcher: Batcher | None = None
        if model.max_batch_size > 1:
            self._batcher = Batcher(self._predict, max_batch_size=model.max_batch_size,
                                    batch_timeout_s=model.batch_timeout_ms / 1000,
                                    name=type(model).__name__)
            if concurrency < model.max_batch_size:
                print(f"torpor: {type(model).__name__}.max_batch_size is {model.max_batch_size} but "
                      f"the function's concurrency is {concurrency}: batches hold at most "
                      f"{concurrency} request(s); raise concurrency in torpor.yaml", file=sys.stderr)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path in ("/invoke", "/") and method == "POST":
            await self._invoke(scope, receive, send)
        elif path == "/initialize" and method == "POST":
            await self._initialize(send)
        elif path in ("/_torpor/freeze", "/_torpor/thaw") and method == "POST":
            await self._hook(path.rsplit("/", 1)[1], send)
        elif path == "/healthz":
            await _reply(send, 200, _JSON_HEADERS, b'{"status":"ok"}')
        elif method == "POST" and path in self._routes:
            await self._invoke(scope, receive, send, self._routes[path])
        elif (handler := oip.route(self.model, method, path)) is not None:
            await self._invoke(scope, receive, send, handler)
        else:
            body = error_body(f"no route {method} {path} in the torpor runtime", "not_found",
                              self.function)
            await _reply(send, 404, _JSON_HEADERS, body)

    async def _invoke(self, scope: Scope, receive: Receive, send: Send,
                      handler: Callable[[Any], Any] | None = None) -> None:
        body = await _read_body(receive)
        content_type = b""
        request_id = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"x-torpor-request-id":
                request_id = value.decode("latin-1")
        _request_id.set(request_id)  # torpor.request_id() while this request is handled
        try:
            payload = decode_body(body, content_type)
        except BadPayload as exc:
            await _reply(send, 400, _JSON_HEADERS,
                         error_body(str(exc), "bad_request", self.function, request_id))
            return
        name = type(self.model).__name__
        try:
            if handler is not None:
                result = await self._call(handler, payload)
            elif self._batcher is not None:
                result = await self._batcher.submit(payload)
            else:
                result = await self._predict(payload)
        except BatchFailed as exc:
            await _reply(send, 500, _JSON_HEADERS,
                         error_body(str(exc), "handler_error", self.function, request_id))
            return
        except Exception as exc:
            print(f"torpor: request_id={_request_id.get()} {name}.predict raised:", file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            message = f"{name}.predict raised {type(exc).__name__}: {exc}"
            await _reply(send, 500, _JSON_HEADERS,
                         error_body(message, "handler_error", self.function, request_id))
            return
        if is_stream(result) or (isinstance(result, Response) and is_stream(result.body)):
            await self._stream(result, receive, send, request_id)
            return
        try:
            status, headers, out = encode_result(result)
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"{name}.predict returned a value torpor cannot encode as JSON: {exc}"
            await _reply(send, 500, _JSON_HEADERS,
                         error_body(message, "handler_error", self.function, request_id))
            return
        await _reply(send, status, headers, out)

    async def _predict(self, payload: Any) -> Any:
        if self._async:
            return await self.model.predict(payload)
        if self._pool is None:
            return self.model.predict(payload)
        context = contextvars.copy_context()  # torpor.request_id() in the pool's thread too
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, context.run, self.model.predict, payload
        )

    async def _call(self, handler: Callable[[Any], Any], payload: Any) -> Any:
        """A protocol handler: inline at concurrency 1, else on the pool; awaited if it is async."""
        if self._pool is None:
            result = handler(payload)
        else:
            context = contextvars.copy_context()  # torpor.request_id() in the pool's thread too
            result = await asyncio.get_running_loop().run_in_executor(self._pool, context.run,
                                                                      handler, payload)
        return await result if inspect.isawaitable(result) else result

    async def _stream(self, result: Any, receive: Receive, send: Send,
                      request_id: str | None = None) -> None:
        status, headers, content_type = 200, [], None
        if isinstance(result, Response):
            status = result.status
            content_type = result.content_type.encode() if result.content_type else None
            for key, value in result.headers.items():
                if key.lower() == "content-type":
                    content_type = str(value).encode()
                else:
                    headers.append((key.lower().encode(), str(value).encode()))
            result = result.body
        await stream(result, receive, send, status=status, headers=headers, content_type=content_type,
                     pool=self._pool, name=type(self.model).__name__,
                     error_context=(self.function, request_id))

    async def _initialize(self, send: Send) -> None:
        async with self._init_lock:
            if not self._initialized:
                started = time.perf_counter()
                try:
                    warmup = self.model.warmup
                    if inspect.iscoroutinefunction(warmup):
                        await warmup()
                    else:
                        warmup()
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    message = f"{type(self.model).__name__}.warmup raised {type(exc).__name__}: {exc}"
                    await _reply(send, 500, _JSON_HEADERS,
                                 error_body(message, "warmup_failed", self.function))
                    return
                self._initialized = True
                self.timings["warmup_s"] = time.perf_counter() - started
        body = json.dumps({"initialized": True, **self.timings}).encode()
        await _reply(send, 200, _JSON_HEADERS, body)


    async def _hook(self, which: str, send: Send) -> None:
        """Idle mode: ``on_freeze`` before torpor freezes the process, ``on_thaw`` after it thaws."""
        hook = self.model.on_freeze if which == "freeze" else self.model.on_thaw
        started = time.perf_counter()
        try:
            result = hook()
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            message = f"{type(self.model).__name__}.on_{which} raised {type(exc).__name__}: {exc}"
            await _reply(send, 500, _JSON_HEADERS,
                         error_body(message, f"{which}_failed", self.function))
            return
        body = json.dumps({f"on_{which}_s": time.perf_counter() - started}).encode()
        await _reply(send, 200, _JSON_HEADERS, body)


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _reply(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
