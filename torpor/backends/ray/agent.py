"""The node agent: one Ray actor per node (0 CPUs, pinned there) that runs torpor's local fast paths.

The backend reserves each instance's resources with a placement group (so Ray's scheduler and
autoscaler account for it) and then asks the agent of the node Ray chose to start the instance:

- code arrives as an archive in Ray's object store and is unpacked once per node into
  ``<node dir>/code/<digest>``;
- a Python handler is forked from its revision's template on this node (the same template process
  as the local backend's), else spawned; its runtime listens on the node's IP and a free TCP port;
- idle instances are frozen by this node's freezer (cgroup freezer, SIGSTOP fallback);
- instances follow the agent's life (``TORPOR_SERVER_PID`` is the agent's pid): when the agent or its
  node dies they exit, and the backend reports ``node <id> lost``.

This module does not import Ray (object refs are awaited like futures), so it also runs as a plain
object in a test. Replies are plain dicts: an error crosses Ray as data, not as a pickled exception.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torpor.backend.forked import enable_subreaper, forking_supported
from torpor.backend.freezer import make_freezer
from torpor.backend.local import InstanceProcess, LaunchPlan, LocalBackend, tail
from torpor.backends.ray.code import unpack
from torpor.lifecycle.launcher import StartFailed as LaunchFailed
from torpor.lifecycle.templates import Templates, function_env
from torpor.runtime.instance import TCP_PREFIX
from torpor.spec import FunctionSpec

POLL_S = 0.002  # how often to try connecting while an instance starts


@dataclass
class _Running:
    function: str
    handle: InstanceProcess
    stderr_path: Path
    frozen: bool = False


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NodeAgent:
    """Starts, watches, freezes and stops the instances on its node (see the module docstring)."""

    def __init__(self, node_id: str, node_ip: str, node_dir: str, freezer: str = "auto") -> None:
        enable_subreaper()  # forked instances are re-parented to us, and we collect their status
        self.node_id = node_id
        self.node_ip = node_ip
        self.dir = Path(node_dir)
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        self.local = LocalBackend()
        self.templates = Templates(self.local, self.dir, self.dir / "run")
        self.freezer = make_freezer(self.dir, freezer)
        self.instances: dict[str, _Running] = {}

    async def ping(self) -> dict[str, Any]:
        return {"node": self.node_id, "pid": os.getpid(), "instances": len(self.instances),
                "templates": sorted(self.templates.by_function), "freezer": self.freezer.name}

    async def code(self, digest: str, archive: list[Awaitable[bytes]]) -> str:
        """The local copy of a content-addressed archive, fetched from the object store once."""
        dest = self.dir / "code" / digest
        if not dest.is_dir():
            data = await archive[0]
            dest = await asyncio.to_thread(unpack, data, digest, self.dir / "code")
        return str(dest)

    async def start(
        self, instance_id: str, spec: FunctionSpec, revision: int,
        code: tuple[str, list[Awaitable[bytes]]],
        model: tuple[str, list[Awaitable[bytes]], str] | None = None,
    ) -> dict[str, Any]:
        """Start one instance; ``{"host", "port", "pid", "forked"}`` or ``{"error", "log_tail"}``."""
        logs = self.dir / "logs" / spec.name
        logs.mkdir(parents=True, exist_ok=True)
        stdout, stderr = logs / f"{instance_id}.stdout.log", logs / f"{instance_id}.stderr.log"
        try:
            base_dir = Path(await self.code(*code))
            model_path = None
            if model is not None:
                model_path = Path(await self.code(model[0], model[1])) / model[2]
        except Exception as exc:
            return {"error": f"could not fetch the code onto node {self.node_id}: {exc}",
                    "log_tail": ""}
        port = spec.runtime.port or free_port(self.node_ip)
        handle: InstanceProcess | None = None
        forked = False
        try:
            if spec.runtime.handler is not None and spec.runtime.templates and forking_supported():
                template = self.templates.ensure(spec, revision, base_dir, model_path)
                handle = await self.templates.fork(
                    template, instance_id=instance_id, socket_path=f"{TCP_PREFIX}{self.node_ip}:{port}",
                    stdout=stdout, stderr=stderr, timeout_s=spec.initialize_timeout_s)
                forked = True
            else:
                plan = self._spawn_plan(spec, revision, base_dir, model_path, instance_id, port,
                                        stdout, stderr)
                handle = await self.local.launch(plan)
            if spec.scaling.idle_mode:
                self.freezer.attach(instance_id, handle.pid)
            await self._wait_listening(handle, port, spec.initialize_timeout_s)
        except (LaunchFailed, OSError, TimeoutError) as exc:
            log_path = getattr(exc, "stderr_path", None) or stderr
            if handle is not None:
                await self.local.stop(handle, 1.0)
                self.freezer.release(instance_id)
            return {"error": str(exc), "log_tail": tail(log_path)}
        self.instances[instance_id] = _Running(spec.name, handle, stderr)
        return {"host": self.node_ip, "port": port, "pid": handle.pid, "forked": forked,
                "stderr_log": str(stderr)}

    def _spawn_plan(self, spec: FunctionSpec, revision: int, base_dir: Path, model_path: Path | None,
                    instance_id: str, port: int, stdout: Path, stderr: Path) -> LaunchPlan:
        env = {**function_env(spec, revision, model_path), "TORPOR_INSTANCE": instance_id}
        if spec.runtime.handler is not None:
            argv = [sys.executable, "-m", "torpor.runtime", "--handler", spec.runtime.handler,
                    "--dir", str(base_dir), "--socket", f"{TCP_PREFIX}{self.node_ip}:{port}",
                    "--concurrency", str(spec.concurrency)]
        else:
            assert spec.runtime.command is not None
            env.update(PORT=str(port), HOST=self.node_ip)
            argv = [arg.replace("${PORT}", str(port)).replace("$PORT", str(port))
                    for arg in spec.runtime.command]
        return LaunchPlan(argv=argv, cwd=str(base_dir), env=env, stdout_path=stdout,
                          stderr_path=stderr)

    async def _wait_listening(self, handle: InstanceProcess, port: int, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                _, writer = await asyncio.open_connection(self.node_ip, port)
                writer.close()
                return
            except OSError:
                pass
            if handle.returncode is not None:
                raise LaunchFailed(f"process exited with code {handle.returncode} before listening")
            if loop.time() > deadline:
                raise LaunchFailed(f"did not accept connections within {timeout_s:g}s")
            await asyncio.sleep(POLL_S)

    async def wait(self, instance_id: str) -> dict[str, Any]:
        """Return when the instance has exited: its code and the tail of its stderr."""
        running = self.instances.get(instance_id)
        if running is None:
            return {"code": None, "log_tail": "", "unknown": True}
        code = await running.handle.wait()
        self.instances.pop(instance_id, None)
        self.freezer.release(instance_id)
        return {"code": code, "log_tail": tail(running.stderr_path)}

    async def stop(self, instance_id: str, grace_s: float) -> None:
        running = self.instances.get(instance_id)
        if running is None:
            return
        if running.frozen:
            await self.thaw(instance_id)
        await self.local.stop(running.handle, grace_s)

    async def freeze(self, instance_id: str) -> None:
        running = self.instances[instance_id]
        await self.freezer.freeze(instance_id, running.handle.pid)
        running.frozen = True

    async def thaw(self, instance_id: str) -> None:
        running = self.instances[instance_id]
        await self.freezer.thaw(instance_id, running.handle.pid)
        running.frozen = False

    async def log_tail(self, instance_id: str, max_lines: int) -> str:
        running = self.instances.get(instance_id)
        return tail(running.stderr_path, max_lines) if running is not None else ""

    async def retire(self, function: str) -> None:
        self.templates.retire(function)

    async def shutdown(self) -> None:
        """Stop every instance and template on this node."""
        await asyncio.gather(*(self.stop(i, 1.0) for i in list(self.instances)),
                             return_exceptions=True)
        await self.templates.shutdown()
        self.freezer.close()
