"""Request bodies to payloads and handler results to responses, both ways predictable.

Body in: JSON content types become Python data, and so do bodies with no content type or curl's
default form type when they parse as JSON; ``text/*`` becomes ``str`` (in its charset); any other
declared type stays ``bytes``. Result out: :class:`torpor.Response` as given,
``bytes`` as octet-stream, ``str`` as text, anything else as JSON.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from torpor.sdk import Response

JSON = b"application/json"


class BadPayload(ValueError):
    """The body claims to be JSON but is not."""


_SNIFFED = frozenset({b"", b"application/x-www-form-urlencoded"})  # curl -d's default type


def decode_body(body: bytes, content_type: bytes) -> Any:
    ctype, _, params = content_type.partition(b";")
    ctype = ctype.strip().lower()
    if ctype.startswith(b"text/"):
        return body.decode(_charset(params), errors="replace")
    is_json = ctype == JSON or ctype.endswith(b"+json")
    if not is_json and ctype not in _SNIFFED:
        return body
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError as exc:
        if is_json:
            raise BadPayload(f"request body is not valid JSON: {exc}") from None
        return body


def _charset(params: bytes) -> str:
    for param in params.split(b";"):
        key, _, value = param.partition(b"=")
        if key.strip().lower() == b"charset":
            name = value.strip().strip(b'"').decode("ascii", errors="replace")
            try:
                return codecs.lookup(name).name
            except LookupError:
                break
    return "utf-8"


def encode_result(result: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body for a handler's return value."""
    status, extra, ctype = 200, [], None
    if isinstance(result, Response):
        status, ctype = result.status, result.content_type
        extra = [(k.lower().encode(), str(v).encode()) for k, v in result.headers.items()]
        result = result.body
    if isinstance(result, bytes | bytearray | memoryview):
        body, default = bytes(result), b"application/octet-stream"
    elif isinstance(result, str):
        body, default = result.encode(), b"text/plain; charset=utf-8"
    else:
        body, default = json.dumps(result, separators=(",", ":")).encode(), JSON
    if any(key == b"content-type" for key, _ in extra):
        return status, extra, body
    headers = [(b"content-type", ctype.encode() if ctype else default), *extra]
    return status, headers, body


def error_body(message: str, reason: str) -> bytes:
    return json.dumps({"error": message, "reason": reason}).encode()
