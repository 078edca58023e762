"""The node agent: one Ray actor per node (0 CPUs, pinned there) running the local backend there.

The Ray backend reserves each instance's resources with a placement group (so Ray's scheduler and
autoscaler account for it) and then asks the agent of the node Ray chose to start the instance. The
agent is a thin shell around :class:`~torpor.backends.local.LocalBackend` with ``listen_host`` set
to the node's IP, so an instance on a Ray node keeps every local fast path:

- code arrives as an archive in Ray's object store and is unpacked once per node, under its digest,
  into ``<node dir>/code/`` (the node never reads the server's disk);
- a Python handler is forked from its revision's template on this node, else spawned; its runtime
  listens on the node's IP and a free TCP port, which the gateway dials;
- idle instances are frozen by this node's freezer; logs stay in ``<node dir>/logs``;
- instances follow the agent's life (``TORPOR_SERVER_PID`` is the agent's pid, and the local
  backend's guard process watches it): when the agent or its node dies, they exit.

This module does not import Ray (object refs are awaited like futures). Replies are plain data; a
start that fails returns ``{"error", "log_tail"}`` rather than a pickled exception.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from torpor.backends import CodeRef, InstancePlan, RevisionPlan, StartFailed, UnknownInstance
from torpor.backends.local import LocalBackend
from torpor.clock import MonotonicClock
from torpor.code import CodeError, unpack
from torpor.spec import FunctionSpec

# What the backend sends for a revision's code: the archive's sha256 and its object ref (in a list,
# so that Ray passes the ref instead of fetching the bytes before the call).
Shipped = tuple[str, list[Awaitable[bytes]]]


class NodeAgent:
    """Starts, watches, freezes and stops the instances on its node (see the module docstring)."""

    def __init__(self, node_id: str, node_ip: str, node_dir: str, freezer: str = "auto") -> None:
        from torpor.backends.local.freezer import make_freezer

        self.node_id = node_id
        self.dir = Path(node_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.local = LocalBackend(self.dir, MonotonicClock(), listen_host=node_ip,
                                  freezer=make_freezer(self.dir, freezer))
        self._started = False

    async def ping(self) -> dict[str, Any]:
        if not self._started:  # the guard, once, inside the actor's event loop
            await self.local.startup()
            self._started = True
        return {"node": self.node_id, "pid": os.getpid(), **self.local.health()}

    async def _fetch(self, shipped: Shipped, unpacked: str) -> Path:
        """The node's copy of a shipped archive, fetched from the object store at most once."""
        digest, ref = shipped
        dest = self.dir / "code" / digest
        if dest.is_dir():
            return dest / unpacked
        data = await ref[0]
        return await asyncio.to_thread(unpack, data, digest, self.dir / "code") / unpacked

    async def start(self, instance_id: str, function: str, revision: int, spec: FunctionSpec,
                    code: Shipped, model: tuple[Shipped, str] | None = None) -> dict[str, Any]:
        """Start one instance: ``{"host", "port", "forked", "detail"}`` or ``{"error", "log_tail"}``."""
        try:
            code_dir = await self._fetch(code, "")
            model_ref = None
            if model is not None:
                model_ref = CodeRef(model[0][0], await self._fetch(*model))
        except (CodeError, OSError) as exc:
            return {"error": f"could not unpack the code on node {self.node_id}: {exc}",
                    "log_tail": ""}
        plan = RevisionPlan(function, revision, spec, CodeRef(code[0], code_dir), model_ref)
        try:
            started = await self.local.start(InstancePlan(instance_id, plan))
        except StartFailed as exc:
            return {"error": str(exc), "log_tail": exc.log_tail}
        except OSError as exc:
            return {"error": f"{type(exc).__name__}: {exc}", "log_tail": ""}
        address = started.address
        return {"host": address.host, "port": address.port, "forked": started.forked,
                "detail": started.detail}

    async def wait(self, instance_id: str) -> dict[str, Any]:
        """Return when the instance has exited: its code and the tail of its stderr."""
        try:
            exit_ = await self.local.wait(instance_id)
        except UnknownInstance:
            return {"code": None, "log_tail": ""}
        return {"code": exit_.code, "log_tail": self.local.log_tail(instance_id)}

    async def stop(self, instance_id: str, grace_s: float) -> int | None:
        return (await self.local.stop(instance_id, grace_s)).code

    async def freeze(self, instance_id: str) -> None:
        await self.local.freeze(instance_id)

    async def thaw(self, instance_id: str) -> None:
        await self.local.thaw(instance_id)

    async def log_tail(self, instance_id: str, max_lines: int) -> str:
        return self.local.log_tail(instance_id, max_lines)

    async def retire(self, function: str) -> None:
        self.local.retire(function)

    async def shutdown(self) -> None:
        """Stop every instance and template on this node."""
        await asyncio.gather(*(self.local.stop(i, 1.0) for i in self.local.instance_ids()),
                             return_exceptions=True)
        await self.local.shutdown()
