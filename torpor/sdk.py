"""The user's API: subclass :class:`Model`.

Quick start::

    # model.py, next to torpor.yaml (runtime.handler: "model:Echo")
    import torpor

    class Echo(torpor.Model):
        def setup(self) -> None:          # once per instance, before traffic
            self.prefix = "echo: "

        def predict(self, payload):       # JSON in, JSON out (sync or async)
            return {"echo": payload}

Lifecycle, in order: ``load()`` (device-free preparation such as reading or memory-mapping weights;
a template process may run it once and share it with forked instances), ``setup()`` (per instance,
e.g. moving weights to a device), ``warmup()`` (run by ``POST /initialize`` before the instance takes
traffic, so no real request pays for lazy initialisation), then ``predict(payload)`` per request.
``on_freeze()`` and ``on_thaw()`` run around idle mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    """A handler result with an explicit status, headers or content type.

    ``body`` may be JSON-serialisable data, ``str`` or ``bytes``.
    """

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


class Model:
    """Base class for a torpor function written in Python.

    ``payload`` given to :meth:`predict` is the decoded JSON body when the request's content type is
    JSON, ``str`` for ``text/*``, and ``bytes`` otherwise. The result may be JSON-serialisable data,
    ``str``, ``bytes`` or a :class:`Response`.
    """

    def load(self) -> None:
        """Device-free preparation shared by every instance of a revision (read weights, tokenizers)."""

    def setup(self) -> None:
        """Per-instance preparation, after :meth:`load`."""

    def warmup(self) -> None:
        """Run once by ``/initialize`` before the instance is READY (e.g. one dummy inference)."""

    def predict(self, payload: Any) -> Any:
        """Answer one request. May be ``async def``."""
        raise NotImplementedError(f"{type(self).__name__}.predict is not implemented")

    def on_freeze(self) -> None:
        """Called before the instance is frozen in idle mode."""

    def on_thaw(self) -> None:
        """Called after the instance is thawed, before it takes the waiting request."""
