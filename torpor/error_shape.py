"""The one JSON error body torpor answers with, from the gateway, the runtime and the control API.

    {"error": "<one sentence a user can act on>", "reason": "<machine-readable word>",
     "function": "<function name or null>", "request_id": "<x-torpor-request-id or null>"}

``reason`` is stable (``not_found``, ``bad_request``, ``bad_path``, ``body_too_large``,
``queue_full``, ``queue_timeout``, ``cold_start_failed``, ``instance_failed``, ``function_timeout``,
``handler_error``, ``invalid_spec``, ...); ``error`` is for people. OpenAI's own shape is used under
``/v1/`` instead.
"""

from __future__ import annotations

import json

ERROR_KEYS = ("error", "reason", "function", "request_id")


def error_dict(message: str, reason: str, function: str | None = None,
               request_id: str | None = None) -> dict[str, str | None]:
    return {"error": message, "reason": reason, "function": function, "request_id": request_id}


def error_json(message: str, reason: str, function: str | None = None,
               request_id: str | None = None) -> bytes:
    return json.dumps(error_dict(message, reason, function, request_id)).encode()
