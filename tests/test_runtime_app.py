"""The instance's ASGI app (``/invoke``, ``/initialize``, ``/healthz``), driven in-process over httpx."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

import torpor
from torpor.runtime.app import ModelApp


def make_client(model: torpor.Model, concurrency: int = 1) -> httpx.AsyncClient:
    app = ModelApp(model, concurrency=concurrency)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://instance")


class Echo(torpor.Model):
    def predict(self, payload: Any) -> Any:
        return {"echo": payload}


class AsyncEcho(torpor.Model):
    async def predict(self, payload: Any) -> Any:
        await asyncio.sleep(0)
        return {"echo": payload, "async": True}


class Broken(torpor.Model):
    def predict(self, payload: Any) -> Any:
        raise ValueError(f"cannot handle {payload!r}")


class CountingWarmup(torpor.Model):
    def __init__(self) -> None:
        self.warmups = 0

    def warmup(self) -> None:
        self.warmups += 1

    def predict(self, payload: Any) -> Any:
        return self.warmups


class SlowAsyncWarmup(CountingWarmup):
    async def warmup(self) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        self.warmups += 1


class FailingWarmup(CountingWarmup):
    def warmup(self) -> None:
        self.warmups += 1
        raise RuntimeError("no GPU visible")


class Rendezvous(torpor.Model):
    """Request "a" or "b" marks its arrival, then waits for the other: both True only if they overlap."""

    def __init__(self) -> None:
        self.arrived = {"a": threading.Event(), "b": threading.Event()}

    def predict(self, payload: str) -> dict[str, Any]:
        other = "b" if payload == "a" else "a"
        self.arrived[payload].set()
        return {"overlapped": self.arrived[other].wait(timeout=2),
                "thread": threading.current_thread().name}


class ThreadName(torpor.Model):
    def predict(self, payload: Any) -> str:
        return threading.current_thread().name


class TestInvoke:
    async def test_sync_predict(self) -> None:
        """A sync predict gets the decoded JSON and its result comes back as JSON."""
        async with make_client(Echo()) as client:
            response = await client.post("/invoke", json={"text": "hi"})
        assert (response.status_code, response.headers["content-type"]) == (200, "application/json")
        assert response.json() == {"echo": {"text": "hi"}}

    async def test_async_predict(self) -> None:
        """An async predict is awaited."""
        async with make_client(AsyncEcho()) as client:
            response = await client.post("/invoke", json=[1, 2])
        assert (response.status_code, response.json()) == (200, {"echo": [1, 2], "async": True})

    async def test_root_path_invokes(self) -> None:
        """POST / is the same as POST /invoke."""
        async with make_client(Echo()) as client:
            response = await client.post("/", json=3)
        assert (response.status_code, response.json()) == (200, {"echo": 3})

    async def test_text_in_text_out(self) -> None:
        """A text/plain body reaches predict as str; a str result goes back as text."""
        class Upper(torpor.Model):
            def predict(self, payload: Any) -> Any:
                return payload.upper()

        async with make_client(Upper()) as client:
            response = await client.post("/invoke", content="café", headers={"content-type": "text/plain"})
        assert (response.status_code, response.text) == (200, "CAFÉ")
        assert response.headers["content-type"] == "text/plain; charset=utf-8"

    async def test_response_result(self) -> None:
        """A Response result sets status, headers and content type."""
        class Created(torpor.Model):
            def predict(self, payload: Any) -> Any:
                return torpor.Response(b"png", status=201, headers={"X-Id": "7"}, content_type="image/png")

        async with make_client(Created()) as client:
            response = await client.post("/invoke", json={})
        assert (response.status_code, response.content) == (201, b"png")
        assert (response.headers["content-type"], response.headers["x-id"]) == ("image/png", "7")

    async def test_predict_raises(self, capsys: Any) -> None:
        """A predict that raises is a 500 naming the class and the exception; the traceback goes to stderr."""
        async with make_client(Broken()) as client:
            response = await client.post("/invoke", json="x")
        assert response.status_code == 500
        assert response.json() == {"error": "Broken.predict raised ValueError: cannot handle 'x'",
                                   "reason": "handler_error",
                                   "function": None, "request_id": None}
        assert "ValueError: cannot handle 'x'" in capsys.readouterr().err

    async def test_unserialisable_result(self, capsys: Any) -> None:
        """A result that cannot be encoded is a 500 rather than a broken connection."""
        class Sets(torpor.Model):
            def predict(self, payload: Any) -> Any:
                return {1, 2}

        async with make_client(Sets()) as client:
            response = await client.post("/invoke", json={})
        assert response.status_code == 500
        assert response.json() == {
            "error": "Sets.predict returned a value torpor cannot encode as JSON: "
                     "Object of type set is not JSON serializable",
            "reason": "handler_error", "function": None, "request_id": None,
        }

    async def test_invalid_json(self) -> None:
        """A body that claims JSON but is not is a 400, and predict is not called."""
        async with make_client(Broken()) as client:
            response = await client.post("/invoke", content=b"{oops",
                                         headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json() == {
            "error": "request body is not valid JSON: Expecting property name enclosed in double quotes: "
                     "line 1 column 2 (char 1)",
            "reason": "bad_request", "function": None, "request_id": None,
        }


class TestInitialize:
    async def test_warmup_runs_once(self) -> None:
        """The first /initialize runs warmup; a second answers 200 without running it again."""
        model = CountingWarmup()
        async with make_client(model) as client:
            first = await client.post("/initialize")
            second = await client.post("/initialize")
        assert first.status_code == second.status_code == 200
        assert first.json()["initialized"] is second.json()["initialized"] is True
        assert first.json()["warmup_s"] == second.json()["warmup_s"] >= 0  # measured once
        assert model.warmups == 1

    async def test_concurrent_initialize_warms_once(self) -> None:
        """Two /initialize calls racing run an async warmup once; both wait for it."""
        model = SlowAsyncWarmup()
        async with make_client(model) as client:
            responses = await asyncio.gather(client.post("/initialize"), client.post("/initialize"))
        assert [r.status_code for r in responses] == [200, 200]
        assert model.warmups == 1

    async def test_warmup_raises(self, capsys: Any) -> None:
        """A warmup that raises is a 500 naming the class and exception: the instance never becomes ready."""
        model = FailingWarmup()
        async with make_client(model) as client:
            response = await client.post("/initialize")
        assert response.status_code == 500
        assert response.json() == {"error": "FailingWarmup.warmup raised RuntimeError: no GPU visible",
                                   "reason": "warmup_failed",
                                   "function": None, "request_id": None}
        assert "warmup raised" in response.json()["error"]

    async def test_failed_warmup_runs_again(self, capsys: Any) -> None:
        """After a failed warmup the instance is not initialized: the next call tries again."""
        model = FailingWarmup()
        async with make_client(model) as client:
            codes = [(await client.post("/initialize")).status_code for _ in range(2)]
        assert (codes, model.warmups) == ([500, 500], 2)

    async def test_default_warmup(self) -> None:
        """A model without warmup initializes with the base class's no-op."""
        async with make_client(Echo()) as client:
            response = await client.post("/initialize")
        assert response.status_code == 200
        assert response.json()["initialized"] is True


class TestRoutes:
    async def test_healthz(self) -> None:
        """/healthz answers 200 without touching the model."""
        async with make_client(Broken()) as client:
            response = await client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})

    async def test_unknown_path(self) -> None:
        """An unknown path is a 404 naming the method and path."""
        async with make_client(Echo()) as client:
            response = await client.get("/nope")
        assert response.status_code == 404
        assert response.json() == {"error": "no route GET /nope in the torpor runtime", "reason": "not_found",
                                   "function": None, "request_id": None}

    async def test_invoke_needs_post(self) -> None:
        """GET /invoke is not an invocation."""
        async with make_client(Echo()) as client:
            response = await client.get("/invoke")
        assert (response.status_code, response.json()["reason"]) == (404, "not_found")


class TestConcurrency:
    async def test_sync_predict_overlaps_on_threads(self) -> None:
        """With concurrency 2 two sync predicts run at once, each on a 'predict' pool thread."""
        model = Rendezvous()
        async with make_client(model, concurrency=2) as client:
            a, b = await asyncio.gather(client.post("/invoke", json="a"), client.post("/invoke", json="b"))
        results = [a.json(), b.json()]
        assert [r["overlapped"] for r in results] == [True, True]
        assert all(r["thread"].startswith("predict") for r in results)
        assert results[0]["thread"] != results[1]["thread"]

    async def test_concurrency_one_runs_inline(self) -> None:
        """With concurrency 1 a sync predict runs on the event-loop thread (no thread hop)."""
        async with make_client(ThreadName(), concurrency=1) as client:
            response = await client.post("/invoke", json={})
        assert response.text == threading.current_thread().name


class WhoAmI(torpor.Model):
    def predict(self, payload: Any) -> Any:
        return {"request_id": torpor.request_id()}


class TestRequestId:
    async def test_inline_and_on_the_thread_pool(self) -> None:
        """``torpor.request_id()`` is the gateway's ``x-torpor-request-id``, inline (concurrency 1)
        and in the thread pool (concurrency 4); without the header it is None, never a stale id."""
        for concurrency in (1, 4):
            async with make_client(WhoAmI(), concurrency) as client:
                response = await client.post("/invoke", json={},
                                             headers={"x-torpor-request-id": f"rid-{concurrency}"})
                assert response.json() == {"request_id": f"rid-{concurrency}"}
                assert (await client.post("/invoke", json={})).json() == {"request_id": None}
        assert torpor.request_id() is None  # outside a request
