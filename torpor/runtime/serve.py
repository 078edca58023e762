"""Serve a Model's ASGI app on a Unix socket with uvicorn (httptools parser, uvloop)."""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from torpor.runtime.app import ModelApp
from torpor.sdk import Model


class CleanExitServer(uvicorn.Server):
    """A uvicorn server whose SIGINT/SIGTERM shutdown ends the process with code 0.

    uvicorn re-raises a captured signal after its graceful shutdown; torpor treats a finished
    graceful shutdown as a clean exit.
    """

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve_unix(
    model: Model, socket_path: str, concurrency: int, timings: dict[str, float] | None = None
) -> None:
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    config = uvicorn.Config(
        ModelApp(model, concurrency, timings),
        uds=socket_path,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    CleanExitServer(config).run()
