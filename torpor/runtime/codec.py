"""Request bodies to payloads and handler results to responses, both ways predictable.

Body in: JSON content types (and bodies with no useful type that parse as JSON) become Python data,
``text/*`` becomes ``str``, anything else ``bytes``. Result out: :class:`torpor.Response` as given,
``bytes`` as octet-stream, ``str`` as text, anything else as JSON.
"""

from __future__ import annotations

import json
from typing import Any

from torpor.sdk import Response

JSON = b"application/json"


class BadPayload(ValueError):
    """The body claims to be JSON but is not."""


def decode_body(body: bytes, content_type: bytes) -> Any:
    ctype = content_type.split(b";", 1)[0].strip().lower()
    if ctype.startswith(b"text/"):
        return body.decode("utf-8", errors="replace")
    if ctype == b"application/octet-stream":
        return body
    is_json = ctype == JSON or ctype.endswith(b"+json")
    if not body:
        return None if (is_json or not ctype) else body
    try:
        return json.loads(body)
    except ValueError as exc:
        if is_json:
            raise BadPayload(f"request body is not valid JSON: {exc}") from None
        return body


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
    headers = [(b"content-type", ctype.encode() if ctype else default), *extra]
    return status, headers, body


def error_body(message: str, reason: str) -> bytes:
    return json.dumps({"error": message, "reason": reason}).encode()
