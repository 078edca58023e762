"""Serve a Model's ASGI app on a Unix socket (or a loopback port) with torpor's lean HTTP server.

The instance's side of the hot path: :class:`torpor.httpserver.HttpServer` on uvloop, no access log,
connections from the gateway kept alive for as long as it likes (no idle timeout: the gateway owns
the pool) and none of the bounds for hostile clients (the gateway, its only client, applies them).
SIGTERM finishes the requests in flight (up to ``GRACEFUL_TIMEOUT_S``) and exits with 0.
"""

from __future__ import annotations

from torpor.httpserver import UNLIMITED, HttpServer
from torpor.runtime.app import ModelApp
from torpor.sdk import Model

GRACEFUL_TIMEOUT_S = 5.0


def make_server(model: Model, concurrency: int, timings: dict[str, float] | None = None) -> HttpServer:
    return HttpServer(ModelApp(model, concurrency, timings), graceful_timeout_s=GRACEFUL_TIMEOUT_S,
                      limits=UNLIMITED)


def serve_unix(
    model: Model, socket_path: str, concurrency: int, timings: dict[str, float] | None = None
) -> None:
    make_server(model, concurrency, timings).run(uds=socket_path)


def serve_tcp(
    model: Model, port: int, concurrency: int, timings: dict[str, float] | None = None,
    host: str = "127.0.0.1",
) -> None:
    """The same server on a TCP port: bench/gateway.py reaches an instance directly through it."""
    make_server(model, concurrency, timings).run(host=host, port=port)
