"""The gateway's ASGI app for ``/fn/{name}/{path}``: find the route, take a slot, forward, stream back.

Headers on every response: ``x-torpor-request-id``, and for forwarded ones ``x-torpor-instance`` and
``x-torpor-start`` (``cold`` when the request waited for an instance that became ready after it
arrived, ``thawed`` when it waited for a frozen one to thaw, else ``warm``). Errors the gateway
answers itself are JSON: ``{"error", "reason", "function", "request_id"}``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping

import aiohttp

from torpor.clock import Clock
from torpor.errors import GatewayError, UpstreamFailed, UpstreamTimeout
from torpor.gateway.route import Endpoint, FunctionRoute
from torpor.gateway.upstream import UpstreamClient
from torpor.types import Receive, Scope, Send

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
     "proxy-authorization", "proxy-authenticate", "content-length"}
)
_DROP_FROM_UPSTREAM = frozenset({"connection", "keep-alive", "transfer-encoding", "date", "server"})


class Gateway:
    def __init__(self, routes: Mapping[str, FunctionRoute], clock: Clock) -> None:
        self.routes = routes
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        name, _, rest = path[4:].partition("/")  # strip "/fn/"
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        route = self.routes.get(name)
        if route is None:
            await _error(send, 404, f"function {name!r} not found", "not_found", name, request_id)
            return
        body = await _read_body(receive)
        if body is None:
            message = f"request body exceeds {MAX_BODY_BYTES} bytes"
            await _error(send, 413, message, "body_too_large", name, request_id)
            return
        arrived_at = self.clock.now()
        try:
            lease = await route.acquire()
        except GatewayError as exc:
            await _gateway_error(send, exc, name, request_id)
            return
        query = scope.get("query_string", b"")
        target = "/" + rest + ("?" + query.decode("latin-1") if query else "")
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.decode("latin-1") not in _HOP_BY_HOP
        ]
        headers.append(("x-torpor-request-id", request_id))
        try:
            sent = await self._forward(route, lease.endpoint, scope["method"], target, headers,
                                       body, send, request_id, arrived_at)
            if not sent:
                # Nothing reached that instance (it died between choice and send): one more try
                # elsewhere. A request an instance did receive is never replayed.
                failed = lease.endpoint
                failed.accepting = False
                lease.release()
                try:
                    lease = await route.acquire()
                except GatewayError as exc:
                    await _gateway_error(send, exc, name, request_id)
                    return
                sent = await self._forward(route, lease.endpoint, scope["method"], target,
                                           headers, body, send, request_id, arrived_at)
                if not sent:
                    lease.endpoint.accepting = False
                    await _upstream_failed(send, name, lease.endpoint, None, request_id)
        finally:
            lease.release()

    async def _forward(
        self,
        route: FunctionRoute,
        endpoint: Endpoint,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        send: Send,
        request_id: str,
        arrived_at: float,
    ) -> bool:
        """Send once; False when the connection could not even be made (safe to retry)."""
        client = endpoint.client
        assert isinstance(client, UpstreamClient)
        try:
            response = await client.session.request(
                method,
                client.base + target,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=route.timeout_s),
            )
        except aiohttp.ClientConnectorError:
            return False
        except (TimeoutError, aiohttp.ServerTimeoutError):
            message = (f"function {route.name!r} did not answer within "
                       f"timeout_s={route.timeout_s:g}s on instance {endpoint.instance_id}")
            await _gateway_error(send, UpstreamTimeout(message), route.name, request_id)
            return True
        except aiohttp.ClientError as exc:
            await _upstream_failed(send, route.name, endpoint, exc, request_id)
            return True
        if endpoint.ready_at > arrived_at:
            start = "cold"
        elif endpoint.thawed_at > arrived_at:
            start = "thawed"
        else:
            start = "warm"
        await _stream(response, send, request_id, endpoint.instance_id, start)
        if endpoint.first_response_at is None:
            endpoint.first_response_at = self.clock.now()
        return True


async def _stream(
    response: aiohttp.ClientResponse, send: Send, request_id: str, instance: str, start: str
) -> None:
    headers = [
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in response.headers.items()
        if k.lower() not in _DROP_FROM_UPSTREAM
    ]
    headers += [
        (b"x-torpor-request-id", request_id.encode()),
        (b"x-torpor-instance", instance.encode()),
        (b"x-torpor-start", start.encode()),
    ]
    try:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("instance %s broke off a response: %s", instance, exc)
        await send({"type": "http.response.body", "body": b""})
    finally:
        response.release()


async def _upstream_failed(
    send: Send, name: str, endpoint: Endpoint, exc: Exception | None, request_id: str
) -> None:
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    message = f"instance {endpoint.instance_id} of function {name!r} failed mid-request{detail}"
    await _gateway_error(send, UpstreamFailed(message), name, request_id)


async def _gateway_error(send: Send, exc: GatewayError, name: str, request_id: str) -> None:
    extra = []
    if exc.retry_after_s is not None:
        extra.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
    await _error(send, exc.status, exc.message, exc.reason, name, request_id, extra)


async def _error(
    send: Send,
    status: int,
    message: str,
    reason: str,
    name: str,
    request_id: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(
        {"error": message, "reason": reason, "function": name, "request_id": request_id}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"x-torpor-request-id", request_id.encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
