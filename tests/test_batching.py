"""Batching: settings checked at class declaration, batch sizes, timeout flush, errors split back.

Batch timeouts are real event-loop timers, kept to a few milliseconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import torpor
from torpor.runtime.app import ModelApp
from torpor.runtime.batching import Batcher, BatchFailed


class TestDeclaration:
    def test_defaults_mean_no_batching(self) -> None:
        """A Model that says nothing about batching takes one payload per call."""
        class Plain(torpor.Model):
            pass

        assert (Plain.max_batch_size, Plain.batch_timeout_ms) == (1, 10.0)

    @pytest.mark.parametrize("size", [0, -3, 2.5, "8", True])
    def test_bad_max_batch_size(self, size: Any) -> None:
        """max_batch_size must be an integer of at least 1; the error names class and value."""
        with pytest.raises(TypeError) as excinfo:
            type("Bad", (torpor.Model,), {"max_batch_size": size})
        assert str(excinfo.value) == f"Bad.max_batch_size must be an integer of at least 1, got {size!r}"

    @pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "5", None])
    def test_bad_batch_timeout(self, timeout: Any) -> None:
        """batch_timeout_ms must be a finite number of milliseconds, at least 0."""
        with pytest.raises(TypeError) as excinfo:
            type("Bad", (torpor.Model,), {"max_batch_size": 4, "batch_timeout_ms": timeout})
        assert str(excinfo.value) == (
            f"Bad.batch_timeout_ms must be a number of milliseconds of at least 0, got {timeout!r}")

    def test_streaming_and_batching_do_not_mix(self) -> None:
        """A batching Model whose predict yields is refused when declared."""
        with pytest.raises(TypeError, match="streams"):
            class Both(torpor.Model):
                max_batch_size = 4

                def predict(self, payload: Any) -> Any:
                    yield payload


class Recorder:
    """An async batch predict that records each batch and doubles every payload."""

    def __init__(self, delay_s: float = 0.0, result: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.delay_s = delay_s
        self.result = result
        self.running = 0
        self.most_running = 0

    async def __call__(self, payloads: list[Any]) -> Any:
        self.batches.append(payloads)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
        if self.result is not None:
            return self.result
        return [p * 2 for p in payloads]


def make_batcher(predict: Any, size: int, timeout_ms: float) -> Batcher:
    return Batcher(predict, max_batch_size=size, batch_timeout_s=timeout_ms / 1000, name="Doubler")


class TestBatcher:
    async def test_full_batch_runs_at_once(self) -> None:
        """max_batch_size payloads together run as one call without waiting for the timeout."""
        predict = Recorder()
        batcher = make_batcher(predict, 4, timeout_ms=60_000)
        results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 2)
        assert (predict.batches, results) == ([[0, 1, 2, 3]], [0, 2, 4, 6])

    async def test_timeout_flushes_a_partial_batch(self) -> None:
        """Fewer payloads than max_batch_size run together once batch_timeout_ms has passed."""
        predict = Recorder()
        batcher = make_batcher(predict, 8, timeout_ms=5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        assert (predict.batches, results) == ([[0, 1, 2]], [0, 2, 4])
        assert loop.time() - started >= 0.005

    async def test_burst_splits_into_full_batches(self) -> None:
        """10 payloads at max_batch_size 4: batches of 4, 4 and 2, answers in order."""
        predict = Recorder()
        batcher = make_batcher(predict, 4, timeout_ms=2)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        assert [len(b) for b in predict.batches] == [4, 4, 2]
        assert results == [i * 2 for i in range(10)]

    async def test_one_batch_at_a_time(self) -> None:
        """Payloads arriving while a batch runs form the next batch; batches never overlap."""
        predict = Recorder(delay_s=0.01)
        batcher = make_batcher(predict, 2, timeout_ms=1)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        assert (predict.most_running, results) == (1, [0, 2, 4, 6, 8, 10])

    async def test_wrong_length_fails_every_request(self, capsys: Any) -> None:
        """A result list of the wrong length fails each request of the batch with a clear error."""
        batcher = make_batcher(Recorder(result=[1, 2]), 3, timeout_ms=60_000)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        message = ("Doubler.predict returned 2 results for a batch of 3 requests; a batching predict "
                   "must return a list with one result per payload, in order")
        assert [(type(o), str(o)) for o in outcomes] == [(BatchFailed, message)] * 3
        assert message in capsys.readouterr().err

    async def test_not_a_list_fails_every_request(self) -> None:
        """A batch predict that returns something other than a list is refused the same way."""
        batcher = make_batcher(Recorder(result={"a": 1}), 2, timeout_ms=60_000)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(2)), return_exceptions=True)
        assert {str(o) for o in outcomes} == {
            "Doubler.predict returned a dict for a batch of 2 requests; a batching predict must "
            "return a list with one result per payload, in order"}

    async def test_exception_fails_every_request(self, capsys: Any) -> None:
        """predict raising fails the whole batch, each request naming the exception."""
        async def broken(payloads: list[Any]) -> list[Any]:
            raise RuntimeError("CUDA out of memory")

        batcher = make_batcher(broken, 2, timeout_ms=60_000)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(2)), return_exceptions=True)
        assert [str(o) for o in outcomes] == ["Doubler.predict raised RuntimeError: CUDA out of memory"] * 2
        assert "Traceback" in capsys.readouterr().err

    async def test_next_batch_after_a_failure(self) -> None:
        """A failed batch does not stop the batcher: the next payloads are served."""
        predict = Recorder(result=[])
        batcher = make_batcher(predict, 1, timeout_ms=0)
        with pytest.raises(BatchFailed):
            await batcher.submit(1)
        predict.result = None
        assert await batcher.submit(5) == 10


class Embed(torpor.Model):
    max_batch_size = 4
    batch_timeout_ms = 5.0

    def setup(self) -> None:
        self.sizes: list[int] = []

    def predict(self, payloads: list[Any]) -> list[Any]:
        self.sizes.append(len(payloads))
        return [{"len": len(str(p)), "batch": len(payloads)} for p in payloads]


def make_client(model: torpor.Model, concurrency: int) -> httpx.AsyncClient:
    model.setup()
    app = ModelApp(model, concurrency=concurrency)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://instance")


class TestModelApp:
    async def test_concurrent_requests_share_one_predict(self) -> None:
        """Four concurrent requests to a batching Model are answered by one predict on a list of 4."""
        model = Embed()
        async with make_client(model, concurrency=4) as client:
            responses = await asyncio.gather(*(client.post("/invoke", json="x" * n) for n in range(4)))
        assert model.sizes == [4]
        assert [r.json() for r in responses] == [{"len": n, "batch": 4} for n in range(4)]

    async def test_wrong_length_is_500_for_each(self, capsys: Any) -> None:
        """Every request of a batch whose result has the wrong length gets a 500 saying why."""
        class Short(Embed):
            def predict(self, payloads: list[Any]) -> list[Any]:
                return payloads[:1]

        async with make_client(Short(), concurrency=4) as client:
            responses = await asyncio.gather(*(client.post("/invoke", json=n) for n in range(2)))
        assert [r.status_code for r in responses] == [500, 500]
        assert {r.json()["error"] for r in responses} == {
            "Short.predict returned 1 results for a batch of 2 requests; a batching predict must "
            "return a list with one result per payload, in order"}

    def test_low_concurrency_is_pointed_out(self, capsys: Any) -> None:
        """A batching Model on a function with concurrency below max_batch_size is told so at start."""
        ModelApp(Embed(), concurrency=1)
        assert "raise concurrency in torpor.yaml" in capsys.readouterr().err
