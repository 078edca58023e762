"""Who may call which control API route: one dependency every route of the control app runs.

- ``/healthz`` never asks for a key; ``/metrics`` asks for what the server config's
  ``auth.metrics`` says (``admin`` by default, ``key``, or ``public``). The API's schema
  (``/api/v1/openapi.json``, ``/api/v1/docs``) and the console's page and static files are not
  data and ask for none (they are not routes with this dependency).
- Every other route needs ``Authorization: Bearer KEY``: none, an unknown or a revoked key is 401,
  answered by :class:`RequireKey` before anything reads the request's body.
- Nodes, keys and tenants are an admin's (403 for a tenant's key).
- A route with a function ``{name}`` in its path, or a ``function`` query parameter, answers 404 for
  another tenant's function, in the words it uses for one that does not exist. Lists are filtered
  by the routes themselves (:func:`caller_of`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import Request

from torpor.auth import Caller
from torpor.error_shape import error_json
from torpor.errors import Forbidden, NotFound, Unauthorized
from torpor.gateway.proxy import new_request_id
from torpor.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from torpor.platform import Platform

# the page of the console asks for the key itself; the docs page reads only the schema
OPEN_PATHS = frozenset({"/healthz", "/ui", "/ui/", "/api/v1/docs"})
ADMIN_PREFIXES = ("/api/v1/nodes", "/api/v1/keys", "/api/v1/tenants")
NO_KEY = ("this API needs an API key: send `Authorization: Bearer KEY` (the CLI sends --api-key, "
          "TORPOR_API_KEY or the server's DATA_DIR/admin.key; torpor keys create makes one)")
BAD_KEY = "the API key is not valid: it is unknown or was revoked"


OPEN_PREFIXES = ("/ui/", "/api/v1/docs/")
SCHEMA = "/api/v1/openapi.json"


def is_open(path: str, metrics: str) -> bool:
    """Paths that ask for no key: health, the schema and docs, the console's page and files."""
    return (path in OPEN_PATHS or path == SCHEMA or path.startswith(OPEN_PREFIXES)
            or (path == "/metrics" and metrics == "public"))


class RequireKey:
    """ASGI middleware: a request without a valid key to anything but an open path is answered 401
    at once (its body, a code upload's included, is never read)."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self.platform.keys
        if (scope["type"] != "http" or not keys.enabled
                or is_open(scope["path"], self.platform.config.auth.metrics)
                or keys.caller(scope["headers"]) is not None):
            await self.app(scope, receive, send)
            return
        request_id = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"),
                          None) or new_request_id()
        has_key = any(k == b"authorization" for k, _ in scope["headers"])
        body = error_json(BAD_KEY if has_key else NO_KEY, "unauthorized", None, request_id)
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b'Bearer realm="torpor"'),
                                (b"x-torpor-request-id", request_id.encode("latin-1"))]})
        await send({"type": "http.response.body", "body": body})


def caller_of(request: Request) -> Caller:
    """The caller the access check found (admin when auth is off)."""
    caller: Caller = request.state.caller
    return caller


def authorizer(platform: Platform) -> Callable[[Request], Awaitable[None]]:
    async def authorize(request: Request) -> None:
        path: str = request.scope["path"]
        metrics = platform.config.auth.metrics
        if is_open(path, metrics):
            request.state.caller = None
            return
        caller = platform.keys.caller(request.scope["headers"])
        if caller is None:
            has_key = any(k == b"authorization" for k, _ in request.scope["headers"])
            raise Unauthorized(BAD_KEY if has_key else NO_KEY)
        request.state.caller = caller
        if not caller.admin and (path.startswith(ADMIN_PREFIXES)
                                 or (path == "/metrics" and metrics == "admin")):
            raise Forbidden(f"{request.method} {path} needs an admin key; tenant "
                            f"{caller.tenant!r}'s key may not")
        for name in (request.path_params.get("name"), request.query_params.get("function")):
            if name is not None and not caller.admin and not platform.visible(caller, name):
                raise NotFound(f"function {name!r} not found")

    return authorize
