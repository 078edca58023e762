"""Serve a Model's ASGI app on a Unix socket with uvicorn (httptools parser, uvloop)."""

from __future__ import annotations

import os

import uvicorn

from torpor.runtime.app import ModelApp
from torpor.sdk import Model


def serve_unix(model: Model, socket_path: str, concurrency: int) -> None:
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    config = uvicorn.Config(
        ModelApp(model, concurrency),
        uds=socket_path,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
