"""Test function: tries what an isolated instance may and may not do, and says what happened."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import torpor


def _outcome(exc: OSError | None) -> str:
    return "ok" if exc is None else errno.errorcode.get(exc.errno or 0, str(exc.errno))


class Probe(torpor.Model):
    def load(self) -> None:
        self.loaded_as = os.getuid()  # in the template when forked: before any request

    def predict(self, payload: Any) -> dict[str, Any]:
        op, path = payload.get("op"), payload.get("path", "")
        result: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid(),
                                  "loaded_as": self.loaded_as, "pid": os.getpid(),
                                  "home": os.environ.get("HOME"), "cwd": os.getcwd(),
                                  "model": os.environ.get("TORPOR_MODEL_PATH"),
                                  "groups": os.getgroups()}
        error: OSError | None = None
        try:
            if op == "read":
                with open(path, "rb") as f:
                    result["bytes"] = len(f.read())
            elif op == "write":
                with open(path, "w") as f:
                    f.write(payload.get("text", "written by probe"))
            elif op == "list":
                result["names"] = sorted(os.listdir(path))
            elif op == "connect":
                with socket.create_connection(("127.0.0.1", int(payload["port"])), timeout=5):
                    pass
        except OSError as exc:
            error = exc
        result["outcome"] = _outcome(error)
        return result
