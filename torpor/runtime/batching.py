"""Batch aggregation (seed 001): requests that arrive together become one ``predict`` call on a list.

A batch closes when it holds ``max_batch_size`` payloads or ``batch_timeout_ms`` after its first
payload arrived, whichever comes first; one batch runs at a time (a device works on one batch), and
requests that arrive meanwhile form the next one. The results are split back in order; a result list
of the wrong length fails every request of that batch with a message saying so.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


class BatchFailed(Exception):
    """The batch this request was in failed; the message says why (one line, for the client)."""


class Batcher:
    def __init__(
        self,
        predict: Callable[[list[Any]], Awaitable[Any]],
        *,
        max_batch_size: int,
        batch_timeout_s: float,
        name: str,
    ) -> None:
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.name = name
        self.batch_sizes: list[int] = []  # of every batch run, for tests and /initialize timings
        self._pending: deque[tuple[Any, asyncio.Future[Any], float]] = deque()
        self._full: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, payload: Any) -> Any:
        """Queue one payload; returns its own result once its batch has run."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        self._pending.append((payload, result, loop.time()))
        if self._worker is None:
            self._worker = loop.create_task(self._run())
        elif len(self._pending) >= self.max_batch_size and self._full is not None:
            _set(self._full)
        return await result

    async def _run(self) -> None:
        """Form and run batches while payloads are waiting; ends when none is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                deadline = self._pending[0][2] + self.batch_timeout_s
                if len(self._pending) < self.max_batch_size and loop.time() < deadline:
                    self._full = full = loop.create_future()
                    timer = loop.call_at(deadline, _set, full)
                    try:
                        await full
                    finally:
                        timer.cancel()
                        self._full = None
                batch = [self._pending.popleft()
                         for _ in range(min(self.max_batch_size, len(self._pending)))]
                batch = [item for item in batch if not item[1].done()]  # its client gave up
                if batch:
                    await self._execute(batch)
        finally:
            self._worker = None

    async def _execute(self, batch: list[tuple[Any, asyncio.Future[Any], float]]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            results = await self.predict([payload for payload, _, _ in batch])
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            error = BatchFailed(f"{self.name}.predict raised {type(exc).__name__}: {exc}")
            _fail(batch, error)
            return
        if not isinstance(results, list | tuple) or len(results) != len(batch):
            got = (f"{len(results)} results" if isinstance(results, list | tuple)
                   else f"a {type(results).__name__}")
            message = (f"{self.name}.predict returned {got} for a batch of {len(batch)} requests; "
                       f"a batching predict must return a list with one result per payload, in order")
            print(f"torpor: {message}", file=sys.stderr)
            _fail(batch, BatchFailed(message))
            return
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)


def _fail(batch: list[tuple[Any, asyncio.Future[Any], float]], error: BatchFailed) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(error)


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
