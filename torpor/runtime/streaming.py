"""Streaming a handler that yields: each item goes to the client as soon as it is produced.

Items: ``str`` is sent as UTF-8 text, ``bytes`` as is, anything else as one JSON document per line;
the content type follows the first item (``text/plain``, ``application/octet-stream`` or
``application/x-ndjson``) unless the handler returned ``Response(body=generator, content_type=...)``.

A synchronous generator runs on a worker thread, one ``next()`` at a time, so a handler that sleeps
between items does not stop the event loop. When the client (the gateway) goes away, the generator is
closed at once, so its ``finally`` blocks run and it produces nothing more; an async generator is
interrupted even while it waits for its next item.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from typing import Any

from torpor.runtime.codec import error_body
from torpor.types import Receive, Send

_END = object()
NDJSON = b"application/x-ndjson"


def is_stream(value: Any) -> bool:
    """Generators, async generators and other (async) iterators stream; lists and str do not."""
    return isinstance(value, Iterator | AsyncIterator)


def encode_chunk(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str):
        return item.encode()
    return json.dumps(item, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _content_type(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return b"application/octet-stream"
    if isinstance(item, str):
        return b"text/plain; charset=utf-8"
    return NDJSON


async def stream(
    items: Iterator[Any] | AsyncIterator[Any],
    receive: Receive,
    send: Send,
    *,
    status: int,
    headers: list[tuple[bytes, bytes]],
    content_type: bytes | None,
    pool: Executor | None,
    name: str,
    error_context: tuple[str | None, str | None] = (None, None),
) -> None:
    """Send ``items`` as a chunked response; stop and close them when the client disconnects."""
    loop = asyncio.get_running_loop()
    gone = asyncio.ensure_future(_disconnected(receive))
    started = False
    step: asyncio.Future[Any] | None = None
    try:
        while True:
            if isinstance(items, AsyncIterator):
                step = asyncio.ensure_future(_anext(items))
            else:
                step = loop.run_in_executor(pool, _next, items)
            await asyncio.wait((step, gone), return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return  # the client went away while the handler worked on its next item
            try:
                item = step.result()
                chunk = b"" if item is _END else encode_chunk(item)
            except Exception as exc:
                if started:
                    raise  # the response is under way: the server breaks the connection off
                traceback.print_exc(file=sys.stderr)
                message = f"{name}.predict raised {type(exc).__name__}: {exc}"
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body",
                            "body": error_body(message, "handler_error", *error_context)})
                return
            step = None
            if item is _END:
                break
            if not started:
                started = True
                ctype = content_type or _content_type(item)
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", ctype), *headers]})
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if gone.done():
                return
        if not started:
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", content_type or b"text/plain; charset=utf-8"),
                                    *headers]})
        await send({"type": "http.response.body", "body": b""})
    except OSError:
        pass  # send() on a connection the client closed
    finally:
        gone.cancel()
        _close(items, step)


def _next(items: Iterator[Any]) -> Any:
    return next(items, _END)


async def _anext(items: AsyncIterator[Any]) -> Any:
    try:
        return await items.__anext__()
    except StopAsyncIteration:
        return _END


async def _disconnected(receive: Receive) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass


def _close(items: Iterator[Any] | AsyncIterator[Any],
           step: asyncio.Future[Any] | None) -> None:
    """Close the generator now, or once the item it is producing is done (a sync one can't stop)."""
    if isinstance(items, AsyncIterator):
        agen = items
        if step is not None and not step.done():
            step.cancel()  # interrupts the generator where it waits
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            asyncio.ensure_future(aclose()).add_done_callback(_quiet)
        return
    close = getattr(items, "close", None)
    if close is None:
        return
    if step is not None and not step.done():
        step.add_done_callback(lambda _: close())
    else:
        close()


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
