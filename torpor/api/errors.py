"""The control API's errors in torpor's one shape, and its bound on request bodies.

Every error the control API answers is ``{"error", "reason", "function", "request_id"}``
(:mod:`torpor.error_shape`); a spec that fails validation adds ``errors``, one ``"field: message"``
line per problem. Validation errors never echo the request back: only the field and the message.
Bodies above the server config's ``http.api_max_body_bytes`` (default
:data:`~torpor.constants.API_MAX_BODY_BYTES`) are refused with 413 before anything
parses them, so a huge POST cannot hold the event loop (and with it the data plane).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from torpor.constants import API_MAX_BODY_BYTES
from torpor.error_shape import error_dict, error_json
from torpor.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    SpecError,
    Unauthorized,
)
from torpor.gateway.proxy import new_request_id
from torpor.types import ASGIApp, Message, Receive, Scope, Send

MAX_VALIDATION_LINES = 10
_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def _request_id(request: Request) -> str:
    return request.headers.get("x-request-id") or new_request_id()


def error_response(request: Request, status: int, message: str, reason: str,
            **extra: Any) -> JSONResponse:
    request_id = _request_id(request)
    function = request.path_params.get("name")
    body: dict[str, Any] = {**error_dict(message, reason, function, request_id), **extra}
    return JSONResponse(body, status_code=status, headers={"x-torpor-request-id": request_id})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error_response(request, 404, str(exc), "not_found")

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        response = error_response(request, 401, str(exc), "unauthorized")
        response.headers["www-authenticate"] = 'Bearer realm="torpor"'
        return response

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return error_response(request, 403, str(exc), "forbidden")

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return error_response(request, 409, str(exc), "conflict")

    @app.exception_handler(QuotaExceeded)
    async def _quota(request: Request, exc: QuotaExceeded) -> JSONResponse:
        return error_response(request, 403, str(exc), "quota_exceeded", tenant=exc.tenant,
                              quota=exc.quota, current=exc.current, limit=exc.limit)

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return error_response(request, 400, str(exc), "bad_request")

    @app.exception_handler(SpecError)
    async def _bad_spec(request: Request, exc: SpecError) -> JSONResponse:
        return error_response(request, 422, str(exc), "invalid_spec", errors=exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        lines = []
        for err in exc.errors()[:MAX_VALIDATION_LINES]:
            field = ".".join(str(part) for part in err.get("loc", ())) or "(body)"
            lines.append(f"{field}: {str(err.get('msg', 'invalid'))[:200]}")
        more = len(exc.errors()) - len(lines)
        message = "invalid request: " + "; ".join(lines) + (f"; and {more} more" if more > 0 else "")
        return error_response(request, 422, message, "bad_request", errors=lines)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        reason = _REASONS.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(request, exc.status_code, message, reason)


class BodyLimit:
    """Refuse control API bodies over ``max_body_bytes`` (413) before the app reads them."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = API_MAX_BODY_BYTES,
                 exempt_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.exempt_prefixes = exempt_prefixes  # routes that bound their own bodies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS")
                or scope["path"].startswith(self.exempt_prefixes)):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"),
                          None) or new_request_id()
        body = error_json(f"request body exceeds {self.max_body_bytes} bytes, the control API's limit "
                          "(http.api_max_body_bytes)", "body_too_large", None, request_id)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"x-torpor-request-id", request_id.encode("latin-1")),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
