"""Request bodies to payloads and handler results to responses."""

from __future__ import annotations

from typing import Any

import pytest

from torpor import Response
from torpor.runtime.codec import BadPayload, decode_body, encode_result, error_body

JSON_CT = (b"content-type", b"application/json")
TEXT_CT = (b"content-type", b"text/plain; charset=utf-8")
BYTES_CT = (b"content-type", b"application/octet-stream")


class TestDecodeBody:
    @pytest.mark.parametrize("content_type", [b"application/json", b"application/json; charset=utf-8",
                                              b"Application/JSON", b"application/vnd.api+json"])
    def test_json(self, content_type: bytes) -> None:
        """JSON content types (any case, with parameters, or +json) become Python data."""
        assert decode_body(b'{"text": "hi", "n": [1, 2]}', content_type) == {"text": "hi", "n": [1, 2]}

    def test_invalid_json_with_json_type(self) -> None:
        """A body that claims JSON but is not raises BadPayload with the parser's reason."""
        with pytest.raises(BadPayload) as excinfo:
            decode_body(b"{oops", b"application/json")
        assert str(excinfo.value) == (
            "request body is not valid JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)"
        )

    def test_empty_json_body_is_none(self) -> None:
        """An empty JSON body is None, not an error."""
        assert decode_body(b"", b"application/json") is None

    @pytest.mark.parametrize("content_type", [b"text/plain", b"text/csv; charset=utf-8"])
    def test_text(self, content_type: bytes) -> None:
        """text/* becomes str, even when it looks like JSON."""
        assert decode_body('{"a": 1} café'.encode(), content_type) == '{"a": 1} café'

    def test_text_invalid_utf8_replaced(self) -> None:
        """Undecodable bytes in text become U+FFFD rather than failing the request."""
        assert decode_body(b"caf\xff", b"text/plain") == "caf\ufffd"

    def test_text_charset_honoured(self) -> None:
        """text/plain; charset=latin-1 is decoded as latin-1."""
        assert decode_body("café".encode("latin-1"), b"text/plain; charset=latin-1") == "café"

    def test_octet_stream_is_bytes(self) -> None:
        """application/octet-stream stays bytes, even when it parses as JSON."""
        assert decode_body(b'{"a": 1}', b"application/octet-stream") == b'{"a": 1}'

    def test_no_content_type_parsed_as_json(self) -> None:
        """A body with no content type that parses as JSON becomes Python data."""
        assert decode_body(b'{"a": 1}', b"") == {"a": 1}

    def test_no_content_type_not_json_is_bytes(self) -> None:
        """A body with no content type that does not parse stays bytes."""
        assert decode_body(b"\x89PNG\r\n", b"") == b"\x89PNG\r\n"

    def test_no_content_type_empty_is_none(self) -> None:
        """An empty body with no content type is None (e.g. a bare POST)."""
        assert decode_body(b"", b"") is None

    def test_other_type_empty_is_bytes(self) -> None:
        """An empty body of a binary type stays b''."""
        assert decode_body(b"", b"image/png") == b""

    def test_other_type_not_json_is_bytes(self) -> None:
        """A binary body of another type stays bytes."""
        assert decode_body(b"\x89PNG\r\n", b"image/png") == b"\x89PNG\r\n"

    def test_binary_type_that_parses_as_json_stays_bytes(self) -> None:
        """A declared binary type stays bytes whatever its content, as the Model docstring promises."""
        assert decode_body(b"42", b"application/x-protobuf") == b"42"


class TestEncodeResult:
    def test_json(self) -> None:
        """Data is compact JSON with a JSON content type."""
        assert encode_result({"label": "cat", "score": [0.5, 1]}) == (
            200, [JSON_CT], b'{"label":"cat","score":[0.5,1]}')

    def test_none_is_json_null(self) -> None:
        """A handler returning None answers JSON null."""
        assert encode_result(None) == (200, [JSON_CT], b"null")

    def test_text(self) -> None:
        """A str is UTF-8 text."""
        assert encode_result("café") == (200, [TEXT_CT], "café".encode())

    @pytest.mark.parametrize("value", [b"\x00\x01", bytearray(b"\x00\x01"), memoryview(b"\x00\x01")])
    def test_bytes(self, value: Any) -> None:
        """bytes, bytearray and memoryview are an octet-stream body."""
        assert encode_result(value) == (200, [BYTES_CT], b"\x00\x01")

    def test_response_status_headers_and_type(self) -> None:
        """A Response sets the status, lowercases header names and overrides the content type."""
        result = Response(body=b"<svg/>", status=201, content_type="image/svg+xml",
                          headers={"X-Model-Version": "7", "Cache-Control": "no-store"})
        assert encode_result(result) == (
            201,
            [(b"content-type", b"image/svg+xml"), (b"x-model-version", b"7"),
             (b"cache-control", b"no-store")],
            b"<svg/>",
        )

    def test_response_default_type_from_body(self) -> None:
        """Without content_type a Response's type follows its body: data as JSON."""
        assert encode_result(Response({"error": "no face found"}, status=422)) == (
            422, [JSON_CT], b'{"error":"no face found"}')

    def test_response_text_body(self) -> None:
        """A Response with a str body is text."""
        assert encode_result(Response("accepted", status=202)) == (202, [TEXT_CT], b"accepted")

    def test_response_header_values_stringified(self) -> None:
        """Non-string header values are sent as their str()."""
        result = Response(b"", headers={"Retry-After": 5})  # type: ignore[dict-item]
        assert encode_result(result)[1] == [BYTES_CT, (b"retry-after", b"5")]

    def test_response_content_type_in_headers(self) -> None:
        """A Content-Type set through headers is the only content type sent."""
        result = Response(b"\x89PNG", headers={"Content-Type": "image/png"})
        assert encode_result(result) == (200, [(b"content-type", b"image/png")], b"\x89PNG")

    def test_unserialisable_raises(self) -> None:
        """A result that is not JSON-serialisable raises TypeError (the app turns it into a 500)."""
        with pytest.raises(TypeError):
            encode_result({"a": {1, 2}})


class TestErrorBody:
    def test_shape(self) -> None:
        """Error bodies are JSON with the message and a machine-readable reason."""
        assert error_body("bad input", "bad_request", "echo", "r1") == (
            b'{"error": "bad input", "reason": "bad_request", "function": "echo", "request_id": "r1"}')
