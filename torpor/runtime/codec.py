"""Request bodies to payloads and handler results to responses, both ways predictable.

Body in: JSON content types become Python data, and so do bodies with no content type or curl's
default form type when they parse as JSON; ``text/*`` becomes ``str`` (in its charset); any other
declared type stays ``bytes`` (and so does an untyped body that does not look like JSON).
Result out: :class:`torpor.Response` as given, ``bytes`` as octet-stream, ``str`` as text, anything
else as JSON.

Only valid JSON goes either way: ``NaN``, ``Infinity`` and numbers too large for a float
(``1e999``) are refused on input (400) and on output (500 naming the handler), never sent as
``NaN``; a body that looks like JSON (starts with ``{`` or ``[``) but does not parse is the client's
error (400), whatever its content type says; nesting deeper than :data:`MAX_JSON_DEPTH` is refused.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from typing import Any

from torpor.error_shape import error_json
from torpor.sdk import Response, check_status

JSON = b"application/json"
MAX_JSON_DEPTH = 100  # nesting levels of arrays and objects in a request body
_LONG_NUMBER = re.compile(rb"\d{300}")  # a literal this long may overflow a float to inf


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
        return loads_strict(body)
    except BadPayload:
        raise
    except _NonFinite as exc:
        raise BadPayload(f"request body is not valid JSON: {exc}") from None
    except ValueError as exc:
        if is_json or body.lstrip()[:1] in (b"{", b"["):
            raise BadPayload(f"request body is not valid JSON: {exc}") from None
        return body


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFinite(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"{text[:20]}... is too large for a number" if len(text) > 20 else
                         f"{text} is too large for a number")
    return value


def loads_strict(body: bytes) -> Any:
    """``json.loads`` that refuses NaN/Infinity, overflowing numbers and deep nesting."""
    check_floats = b"e" in body or b"E" in body or _LONG_NUMBER.search(body) is not None
    try:
        value = json.loads(body, parse_constant=_reject_constant,
                           parse_float=_finite_float if check_floats else None)
    except RecursionError:
        raise BadPayload(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise BadPayload(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


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
        status, ctype = check_status(result.status), result.content_type
        extra = [(k.lower().encode(), str(v).encode()) for k, v in result.headers.items()]
        result = result.body
    if isinstance(result, bytes | bytearray | memoryview):
        body, default = bytes(result), b"application/octet-stream"
    elif isinstance(result, str):
        body, default = result.encode(), b"text/plain; charset=utf-8"
    else:
        body, default = json.dumps(result, separators=(",", ":"), allow_nan=False).encode(), JSON
    if any(key == b"content-type" for key, _ in extra):
        return status, extra, body
    headers = [(b"content-type", ctype.encode() if ctype else default), *extra]
    return status, headers, body


def error_body(message: str, reason: str, function: str | None = None,
               request_id: str | None = None) -> bytes:
    """torpor's one error shape (:mod:`torpor.error_shape`)."""
    return error_json(message, reason, function, request_id)
