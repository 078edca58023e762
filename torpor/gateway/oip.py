"""The Open Inference Protocol (KServe v2 / Triton HTTP) on the gateway's port, under ``/v2``.

The gateway answers the server-level calls itself (``/v2``, ``/v2/health/live``,
``/v2/health/ready``) and a model's readiness (``/v2/models/{name}/ready``: the function is deployed
and not failing its cold starts; it may have zero instances, the next request starts one), so probes
never cold-start anything. Everything else under ``/v2/models/{name}`` (metadata, ``infer``) is
forwarded unchanged to an instance of the function ``name``, whose runtime answers for Models that
declare their tensors (:mod:`torpor.runtime.oip`). Errors are the protocol's ``{"error": "..."}``
(torpor's own error bodies already carry ``error`` as that sentence). A model of an ``auth: key``
function answers 401 under ``/v2/models/{name}`` without its tenant's or an admin's API key.
"""

from __future__ import annotations

import json

from torpor import __version__
from torpor.gateway.frontdoor import (
    AUTHENTICATE,
    UNAUTHORIZED,
    Access,
    Functions,
    Open,
    forward,
    read_body,
    reply,
    request_id_of,
)
from torpor.gateway.proxy import Gateway
from torpor.types import Receive, Scope, Send

PREFIX = "/v2/models/"


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class OipFrontDoor:
    def __init__(self, gateway: Gateway, functions: Functions, access: Access | None = None) -> None:
        self.gateway = gateway
        self.functions = functions
        self.access = access or Open()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        request_id = request_id_of(scope)
        if method == "GET" and path in ("/v2/health/live", "/v2/health/ready"):
            key = path.rsplit("/", 1)[1]
            await reply(send, 200, json.dumps({key: True}).encode(), request_id)
            return
        if method == "GET" and path == "/v2":
            server = {"name": "torpor", "version": __version__, "extensions": []}
            await reply(send, 200, json.dumps(server).encode(), request_id)
            return
        if not path.startswith(PREFIX):
            await reply(send, 404, _error(f"no route {method} {path}"), request_id)
            return
        name, _, rest = path[len(PREFIX):].partition("/")
        fn = self.functions.get(name)
        if fn is None:
            await reply(send, 404, _error(f"model {name!r} not found"), request_id)
            return
        if not self.access.admit(scope, name):
            await reply(send, 401, _error(UNAUTHORIZED), request_id, [AUTHENTICATE])
            return
        if method == "GET" and (rest == "ready" or (rest.startswith("versions/")
                                                    and rest.endswith("/ready"))):
            failure = fn.route.failure
            if failure is None:
                await reply(send, 200, json.dumps({"name": name, "ready": True}).encode(), request_id)
            else:
                await reply(send, 503, _error(failure.message), request_id)
            return
        body = await read_body(receive, self.gateway.max_body_bytes)
        if body is None:
            await reply(send, 413, _error(self.gateway.too_large_message()), request_id)
            return
        await forward(self.gateway, name, fn.route, scope, body, receive, send, request_id)
