"""The control API answers every error in torpor's one shape and bounds its bodies (issue 16)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from torpor.api.app import create_api
from torpor.code import pack_dir
from torpor.constants import API_MAX_BODY_BYTES
from torpor.error_shape import ERROR_KEYS
from torpor.platform import Platform


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    (tmp_path / "data").mkdir()
    platform = Platform(tmp_path / "data")
    transport = httpx.ASGITransport(app=create_api(platform))
    _, key = await platform.create_key("default", admin=True)  # auth is on, as in production
    async with httpx.AsyncClient(transport=transport, base_url="http://torpor",
                                 headers={"authorization": f"Bearer {key}"}) as client:
        yield client
    platform.store.close()


def check_shape(response: httpx.Response, status: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(ERROR_KEYS) <= set(body), body
    assert set(body) - set(ERROR_KEYS) <= {"errors"}, body
    assert body["reason"] == reason
    assert body["request_id"] == response.headers["x-torpor-request-id"]
    return dict(body)


class TestErrorShape:
    async def test_unknown_function_404(self, api: httpx.AsyncClient) -> None:
        """NotFound names the function."""
        body = check_shape(await api.get("/api/v1/functions/nope"), 404, "not_found")
        assert (body["error"], body["function"]) == ("function 'nope' not found", "nope")

    async def test_unknown_route_and_method(self, api: httpx.AsyncClient) -> None:
        """Starlette's own 404 and 405 come in the same shape."""
        check_shape(await api.get("/api/v1/nothing"), 404, "not_found")
        check_shape(await api.patch("/api/v1/functions"), 405, "method_not_allowed")

    async def test_bad_argument_400(self, api: httpx.AsyncClient) -> None:
        """A BadRequest is a 400 naming the argument."""
        body = check_shape(await api.get("/api/v1/billing", params={"since": "yesterday"}), 400,
                           "bad_request")
        assert body["error"].startswith("since:")

    async def test_request_validation_422_without_the_input(self, api: httpx.AsyncClient) -> None:
        """FastAPI's validation errors: one sentence naming the fields, never the input echoed."""
        secret = "x" * 10_000
        response = await api.post("/api/v1/functions", json={"spec": secret, "base_dir": 1})
        body = check_shape(response, 422, "bad_request")
        assert "body.spec" in body["error"]
        assert secret[:100] not in response.text
        assert len(response.content) < 2000

    async def test_invalid_spec_422(self, api: httpx.AsyncClient, tmp_path: Path) -> None:
        """A spec error keeps its per-field lines in ``errors``."""
        (tmp_path / "model.py").write_text("")
        archive = pack_dir(tmp_path)
        assert (await api.put(f"/api/v1/code/{archive.digest}", content=archive.data)).is_success
        response = await api.post("/api/v1/functions", json={
            "spec": {"name": "Bad_Name", "runtime": {"handler": "model:Echo"}},
            "code": archive.digest})
        body = check_shape(response, 422, "invalid_spec")
        assert body["errors"][0].startswith("name: must be a DNS label")

    async def test_request_id_taken_from_the_client(self, api: httpx.AsyncClient) -> None:
        """A client's x-request-id is the error's request_id."""
        response = await api.get("/api/v1/functions/nope", headers={"x-request-id": "abc"})
        assert response.json()["request_id"] == "abc"


class TestBodyLimit:
    async def test_declared_large_body_refused(self, api: httpx.AsyncClient) -> None:
        """A body over the limit is a 413 at once, in the error shape."""
        big = b"{" + b" " * (API_MAX_BODY_BYTES + 1) + b"}"
        started = time.perf_counter()
        response = await api.post("/api/v1/functions", content=big,
                                  headers={"content-type": "application/json"})
        check_shape(response, 413, "body_too_large")
        put = await api.put("/api/v1/functions/x/provision", content=big,
                            headers={"content-type": "application/json"})
        check_shape(put, 413, "body_too_large")
        assert time.perf_counter() - started < 2

    async def test_streamed_large_body_refused(self, api: httpx.AsyncClient) -> None:
        """Without a content-length the limit is counted as the body arrives."""

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(API_MAX_BODY_BYTES // 65536 + 2):
                yield b" " * 65536
                await asyncio.sleep(0)

        response = await api.post("/api/v1/functions", content=chunks(),
                                  headers={"content-type": "application/json"})
        check_shape(response, 413, "body_too_large")

    async def test_code_upload_has_its_own_limit(self, api: httpx.AsyncClient) -> None:
        """A code archive above 4 MB is not refused by the control API's limit."""
        big = b"x" * (API_MAX_BODY_BYTES + 1)
        response = await api.put("/api/v1/code/" + "0" * 64, content=big)
        assert response.status_code == 400  # a digest mismatch, not a 413: it was read
        check_shape(response, 400, "bad_request")

    async def test_body_under_the_limit_passes(self, api: httpx.AsyncClient) -> None:
        """A normal body still reaches the route (here: a 404 for an unknown function)."""
        response = await api.put("/api/v1/functions/x/provision", content=json.dumps({"target": 1}),
                                 headers={"content-type": "application/json"})
        check_shape(response, 404, "not_found")


class TestOfflineDocs:
    async def test_docs_page_and_assets_are_local(self, api: httpx.AsyncClient) -> None:
        """/api/v1/docs loads Swagger UI from this server, never from a CDN."""
        page = await api.get("/api/v1/docs")
        assert page.status_code == 200
        assert "https://" not in page.text and "http://" not in page.text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            assert f"/api/v1/docs/assets/{asset}" in page.text
            response = await api.get(f"/api/v1/docs/assets/{asset}")
            assert response.status_code == 200 and len(response.content) > 500
        assert (await api.get("/api/v1/openapi.json")).json()["info"]["title"] == "torpor control API"
