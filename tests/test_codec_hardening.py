"""Only valid JSON in and out, malformed bodies are the client's error, HTTP statuses (issue 16)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

import torpor
from torpor.error_shape import ERROR_KEYS
from torpor.runtime.app import ModelApp
from torpor.runtime.codec import MAX_JSON_DEPTH, BadPayload, decode_body, encode_result

FORM = b"application/x-www-form-urlencoded"


class TestNonFiniteNumbers:
    @pytest.mark.parametrize("body", [b"NaN", b"[1e999,-Infinity]", b'{"x": Infinity}', b"-1e400",
                                      b"1" * 400 + b".5"])
    @pytest.mark.parametrize("content_type", [b"application/json", b"", FORM])
    def test_refused_on_input(self, body: bytes, content_type: bytes) -> None:
        """NaN, Infinity and numbers that overflow a float are a 400, whatever the content type."""
        with pytest.raises(BadPayload, match="not valid JSON"):
            decode_body(body, content_type)

    def test_finite_numbers_still_parse(self) -> None:
        """Exponents and long integers that fit are kept exactly."""
        assert decode_body(b'[1e5, -2.5E-3, 12345678901234567890]', b"application/json") == [
            100000.0, -0.0025, 12345678901234567890]

    def test_refused_on_output(self) -> None:
        """A result holding NaN raises (the app answers 500) instead of emitting invalid JSON."""
        with pytest.raises(ValueError):
            encode_result({"x": float("nan")})


class TestMalformedBodies:
    @pytest.mark.parametrize("content_type", [b"", FORM])
    @pytest.mark.parametrize("body", [b'{"a":', b"  [1, 2"])
    def test_broken_json_without_json_type_is_400(self, body: bytes, content_type: bytes) -> None:
        """A body that starts like JSON but does not parse is the client's error."""
        with pytest.raises(BadPayload, match="not valid JSON"):
            decode_body(body, content_type)

    def test_other_untyped_body_stays_bytes(self) -> None:
        """A body that does not look like JSON reaches the Model as bytes, as documented."""
        assert decode_body(b"hello", b"") == b"hello"
        assert decode_body(b"\x00\x01", FORM) == b"\x00\x01"

    def test_deep_nesting_refused(self) -> None:
        """100,000 levels are a 400, not a RecursionError; the bound is MAX_JSON_DEPTH."""
        with pytest.raises(BadPayload, match="nests deeper"):
            decode_body(b"[" * 100_000 + b"]" * 100_000, b"application/json")
        with pytest.raises(BadPayload, match="nests deeper"):
            decode_body(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), b"")
        deepest = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
        assert decode_body(deepest, b"application/json") is not None

    def test_many_shallow_objects_accepted(self) -> None:
        """Lots of brackets side by side are not depth."""
        assert len(decode_body(b"[" + b",".join([b"{}"] * 1000) + b"]", b"")) == 1000


class TestStatus:
    @pytest.mark.parametrize("status", [999, 99, 600, True, "200", 200.0])
    def test_invalid_status_refused(self, status: Any) -> None:
        """Only integers from 100 to 599 make a Response."""
        with pytest.raises(ValueError, match="from 100 to 599"):
            torpor.Response("x", status)  # type: ignore[arg-type]

    def test_mutated_status_refused_on_encode(self) -> None:
        """A status changed after construction is checked again when sent."""
        response = torpor.Response("x")
        response.status = 999
        with pytest.raises(ValueError):
            encode_result(response)


class NaNs(torpor.Model):
    def predict(self, payload: Any) -> Any:
        if payload == "stream":
            return (x for x in [{"x": math.nan}])
        if payload == "status":
            return torpor.Response("x", 999)
        return {"x": float("nan")}


class Echo(torpor.Model):
    def predict(self, payload: Any) -> Any:
        return {"echo": payload}


async def invoke(model: torpor.Model, content: bytes,
                 headers: dict[str, str] | None = None) -> httpx.Response:
    app = ModelApp(model)
    app.function = "fn"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://instance") as client:
        return await client.post("/invoke", content=content,
                                 headers={"x-torpor-request-id": "r1", **(headers or {})})


class TestRuntimeAnswers:
    @pytest.mark.parametrize("payload", [b'"plain"', b'"stream"'])
    async def test_nan_result_is_500_naming_the_handler(self, payload: bytes) -> None:
        """A predict returning NaN (whole or streamed) is a 500 in the error shape, never NaN."""
        response = await invoke(NaNs(), payload, {"content-type": "application/json"})
        assert response.status_code == 500
        body = response.json()
        assert tuple(body) == ERROR_KEYS
        assert (body["reason"], body["function"], body["request_id"]) == ("handler_error", "fn", "r1")
        assert body["error"].startswith("NaNs.predict")

    async def test_status_999_is_500(self) -> None:
        """torpor.Response(body, 999) is a handler error, not a response with status 999."""
        response = await invoke(NaNs(), b'"status"', {"content-type": "application/json"})
        assert response.status_code == 500
        assert "from 100 to 599" in response.json()["error"]

    @pytest.mark.parametrize("body", [b"NaN", b'{"a":', b"[" * 100_000])
    async def test_bad_body_is_400_in_error_shape(self, body: bytes) -> None:
        """Curl's default content type with invalid JSON: 400 naming the reason, predict not run."""
        response = await invoke(Echo(), body, {"content-type": "application/x-www-form-urlencoded"})
        assert response.status_code == 400
        assert response.json() == {
            "error": response.json()["error"], "reason": "bad_request", "function": "fn",
            "request_id": "r1"}

    async def test_bytes_reach_the_model(self) -> None:
        """An octet-stream body is bytes in predict (here echoed back as their length)."""

        class Size(torpor.Model):
            def predict(self, payload: Any) -> Any:
                return {"type": type(payload).__name__, "size": len(payload)}

        response = await invoke(Size(), b"\x00\x01\x02", {"content-type": "application/octet-stream"})
        assert response.json() == {"type": "bytes", "size": 3}
