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

Streaming: a ``predict`` that yields (a generator or an async generator) streams each item to the
client as it is produced: ``str`` items as text, ``bytes`` as they are, anything else as one JSON
document per line (``application/x-ndjson``). Return ``Response(body=generator,
content_type="text/event-stream")`` to stream server-sent events.

Batching: set ``max_batch_size`` above 1 and torpor gathers requests that arrive together (waiting
at most ``batch_timeout_ms`` after the first one) into one ``predict`` call on a *list* of payloads,
which must return a list of results of the same length, in order::

    class Embed(torpor.Model):
        max_batch_size = 16
        batch_timeout_ms = 5.0

        def predict(self, payloads: list[Any]) -> list[Any]:
            return [self.encode(p) for p in payloads]

A batch can only form from requests that reach the instance together, so a batching function needs
``concurrency`` of at least ``max_batch_size`` in its ``torpor.yaml`` (with the default
``concurrency: 1`` the gateway sends one request at a time and every batch has one payload).

Following one request: ``torpor.request_id()`` inside ``predict`` is the gateway's
``x-torpor-request-id`` (the client's ``x-request-id`` when it sent one); print it in log lines and
``torpor logs NAME`` finds them next to the gateway's.

Protocols: subclass :class:`torpor.OpenAIModel` and write only ``generate(messages, params)`` (or
``embed(texts)``) to answer OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/embeddings``; declare ``inputs``/``outputs`` (:class:`torpor.Tensor`) and write ``infer`` to
answer the Open Inference Protocol's ``/v2/models/{name}/infer``.
"""

from __future__ import annotations

import contextvars
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torpor.tensors import Tensor

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("torpor_request_id",
                                                                         default=None)


def request_id() -> str | None:
    """The id of the request being handled (None outside ``predict`` and for batched calls)."""
    return _request_id.get()


@dataclass
class Response:
    """A handler result with an explicit status, headers or content type.

    ``body`` may be JSON-serialisable data, ``str`` or ``bytes``.
    """

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None

    def __post_init__(self) -> None:
        check_status(self.status)


def check_status(status: Any) -> int:
    """An HTTP status torpor can send: an integer from 100 to 599."""
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"Response.status must be an HTTP status from 100 to 599, got {status!r}")
    return status


class Model:
    """Base class for a torpor function written in Python.

    ``payload`` given to :meth:`predict` is the decoded JSON body when the request's content type is
    JSON (or absent, or curl's default form type, and the body parses as JSON), ``str`` for
    ``text/*``, and ``bytes`` otherwise. Invalid JSON (``NaN``, ``Infinity``, too deep) never
    reaches it: the client gets a 400. The result may be JSON-serialisable data,
    ``str``, ``bytes`` or a :class:`Response`, or a generator of chunks to stream.

    ``max_batch_size`` and ``batch_timeout_ms`` turn batching on (see the module docstring); they are
    checked when the class is declared.
    """

    max_batch_size: ClassVar[int] = 1
    batch_timeout_ms: ClassVar[float] = 10.0
    # Open Inference Protocol: declared tensors turn on /v2/models/{name}/infer (see ``infer``)
    inputs: ClassVar[tuple[Tensor, ...]] = ()
    outputs: ClassVar[tuple[Tensor, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        size, timeout = cls.max_batch_size, cls.batch_timeout_ms
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise TypeError(f"{cls.__name__}.max_batch_size must be an integer of at least 1, "
                            f"got {size!r}")
        if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                or not math.isfinite(timeout) or timeout < 0):
            raise TypeError(f"{cls.__name__}.batch_timeout_ms must be a number of milliseconds "
                            f"of at least 0, got {timeout!r}")
        if size > 1 and (inspect.isgeneratorfunction(cls.predict)
                         or inspect.isasyncgenfunction(cls.predict)):
            raise TypeError(f"{cls.__name__}.predict streams (it yields), which batching does not "
                            f"support; set max_batch_size = 1 or return whole results")

    def load(self) -> None:
        """Device-free preparation shared by every instance of a revision (read weights, tokenizers)."""

    def setup(self) -> None:
        """Per-instance preparation, after :meth:`load`."""

    def warmup(self) -> None:
        """Run once by ``/initialize`` before the instance is READY (e.g. one dummy inference)."""

    def predict(self, payload: Any) -> Any:
        """Answer one request. May be ``async def``."""
        raise NotImplementedError(f"{type(self).__name__}.predict is not implemented")

    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Open Inference Protocol: declared ``inputs`` in (numpy arrays; BYTES as arrays of ``str``),
        one array (or nested list) per declared output out."""
        raise NotImplementedError(f"{type(self).__name__}.infer is not implemented")

    def on_freeze(self) -> None:
        """Called before the instance is frozen in idle mode."""

    def on_thaw(self) -> None:
        """Called after the instance is thawed, before it takes the waiting request."""
