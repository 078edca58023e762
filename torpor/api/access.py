"""Who may call which control API route: one dependency every route of the control app runs.

- ``/healthz`` never asks for a key; ``/metrics`` asks for what the server config's
  ``auth.metrics`` says (``admin`` by default, ``key``, or ``public``). The API's schema
  (``/api/v1/openapi.json``, ``/api/v1/docs``) and the console's page and static files are not
  data and ask for none (they are not routes with this dependency).
- Every other route needs ``Authorization: Bearer KEY``: none, an unknown or a revoked key is 401.
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
from torpor.errors import Forbidden, NotFound, Unauthorized

if TYPE_CHECKING:
    from torpor.platform import Platform

# the page of the console asks for the key itself; the docs page reads only the schema
OPEN_PATHS = frozenset({"/healthz", "/ui", "/ui/", "/api/v1/docs"})
ADMIN_PREFIXES = ("/api/v1/nodes", "/api/v1/keys", "/api/v1/tenants")
NO_KEY = ("this API needs an API key: send `Authorization: Bearer KEY` (the CLI sends --api-key, "
          "TORPOR_API_KEY or the server's DATA_DIR/admin.key; torpor keys create makes one)")
BAD_KEY = "the API key is not valid: it is unknown or was revoked"


def caller_of(request: Request) -> Caller:
    """The caller the access check found (admin when auth is off)."""
    caller: Caller = request.state.caller
    return caller


def authorizer(platform: Platform) -> Callable[[Request], Awaitable[None]]:
    async def authorize(request: Request) -> None:
        path: str = request.scope["path"]
        metrics = platform.config.auth.metrics
        if path in OPEN_PATHS or (path == "/metrics" and metrics == "public"):
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
