"""What the protocol front doors (OpenAI ``/v1``, Open Inference Protocol ``/v2``) share: the
functions they can route to, and one way into the gateway's forwarding path.

A front door finds the function itself (by a body's ``model``, or a path's model name), then hands the
request to :func:`forward`, which takes a slot on the function's route, forwards the request unchanged
over the gateway's kept-alive instance connections and streams the answer back, exactly as
``/fn/{name}/...`` does (the same queue, accounting, retry and disconnect handling).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from torpor.errors import GatewayError
from torpor.gateway.proxy import _HOP_BY_HOP, Gateway, _error, new_request_id
from torpor.gateway.route import FunctionRoute
from torpor.spec import FunctionSpec
from torpor.types import Receive, Scope, Send


class Routes(Protocol):
    """A function's routes (its revisions' :class:`~torpor.gateway.traffic.Traffic`; a plain
    :class:`FunctionRoute` is its own): the one an untagged request goes to, by weight, and the
    failure that keeps the function from starting instances (None while it can serve)."""

    def pick(self, tag: str) -> FunctionRoute | None: ...

    @property
    def failure(self) -> GatewayError | None: ...


class ServedFunction(Protocol):
    """A deployed function as the front doors see it."""

    @property
    def spec(self) -> FunctionSpec: ...

    @property
    def route(self) -> Routes: ...

    @property
    def created_at(self) -> float: ...


Functions = Mapping[str, ServedFunction]


class Access(Protocol):
    """Whether a request (its headers: ``Authorization: Bearer KEY``) may invoke, or see in a model
    list, function ``name``; the server's answers it from keys held in memory."""

    def may_invoke(self, scope: Scope, name: str) -> bool: ...

    def admit(self, scope: Scope, name: str) -> bool:
        """``may_invoke`` for the request about to be forwarded: a key that let it in is taken off
        its headers, so the function's code never sees a torpor credential."""
        ...


class Open:
    """Everyone may invoke everything (no API keys)."""

    def may_invoke(self, scope: Scope, name: str) -> bool:
        return True

    def admit(self, scope: Scope, name: str) -> bool:
        return True


UNAUTHORIZED = ("this function needs an API key of its tenant or an admin's: send "
                "`Authorization: Bearer KEY`")
AUTHENTICATE = (b"www-authenticate", b'Bearer realm="torpor"')


def request_id_of(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            return str(value.decode("latin-1"))
    return new_request_id()


async def forward(gateway: Gateway, name: str, routes: Routes, scope: Scope, body: bytes,
                  receive: Receive, send: Send, request_id: str) -> None:
    """Forward the request as it came (method, path, query, headers, body) to an instance of the
    revision the function's split picks; errors the gateway answers itself go out through ``send``
    in torpor's shape."""
    route = routes.pick("")
    if route is None:
        await _error(send, 404, f"function {name!r} has no revision taking traffic", "not_found",
                     name, request_id)
        return
    lines = [key + b": " + value + b"\r\n" for key, value in scope["headers"]
             if key not in _HOP_BY_HOP]
    lines.append(b"x-torpor-request-id: " + request_id.encode("latin-1") + b"\r\n")
    target: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    if query:
        target += b"?" + query
    await gateway.dispatch(route, route.name, scope["method"], target, b"".join(lines), body,
                           receive, send, request_id)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None past ``limit`` bytes."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def reply(send: Send, status: int, body: bytes, request_id: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"x-torpor-request-id", request_id.encode("latin-1")), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
