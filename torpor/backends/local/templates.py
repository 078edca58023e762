"""Per-revision templates: start one, fork instances from it, rebuild it if it dies, retire it when
its revision takes no more traffic (several revisions of a function can have one at a time).
See ``torpor.runtime.template`` for the process itself.

A failure here raises :class:`~torpor.backends.StartFailed` whose log tail is the template's stderr
(an import error in the user's module shows there, not in the instance's log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torpor.address import Address
from torpor.backends import StartFailed
from torpor.backends.local import processes
from torpor.backends.local.forked import ForkedHandle
from torpor.backends.local.isolation import InstanceFiles, InstanceUsers
from torpor.backends.local.launch import function_env, wait_listening
from torpor.backends.local.processes import LaunchPlan, ProcessHandle, tail
from torpor.clock import Clock
from torpor.constants import STOP_GRACE_S
from torpor.runtime.cgroups import SPARE_CGROUPS_ENV
from torpor.spec import FunctionSpec

log = logging.getLogger(__name__)


@dataclass
class Template:
    function: str
    revision: int
    control: str
    stdout_path: Path
    stderr_path: Path
    handle: ProcessHandle | None = None
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    forks: int = 0
    crashes: int = 0  # consecutive deaths after being ready (drives the rebuild backoff)
    spare_cgroup: str | None = None  # the limit cgroup its next spare joins ahead of time

    @property
    def alive(self) -> bool:
        return self.handle is None or self.handle.returncode is None

    def to_api(self) -> dict[str, object]:
        if not self.ready.done():
            state = "starting"
        elif self.ready.cancelled() or self.ready.exception() is not None:
            state = "failed"
        else:
            state = "ready" if self.alive else "restarting"
        return {"revision": self.revision, "state": state, "pid": self.handle.pid if self.handle else None,
                "forks": self.forks, "stderr_log": str(self.stderr_path)}


class Templates:
    def __init__(self, data_dir: Path, run_dir: Path, clock: Clock,
                 spare_cgroups: Callable[[Template, FunctionSpec], tuple[str, ...]] | None = None,
                 files: InstanceFiles | None = None) -> None:
        self.clock = clock
        self.files = files or InstanceFiles(data_dir, run_dir, InstanceUsers(data_dir, "off"))
        self.spare_cgroups = spare_cgroups  # limit cgroups a template's first spare joins
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.by_revision: dict[tuple[str, int], Template] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def ensure(self, spec: FunctionSpec, revision: int, base_dir: Path,
               model_path: Path | None = None) -> Template:
        """The live template of this revision, starting (or rebuilding) it if needed."""
        current = self.by_revision.get((spec.name, revision))
        if current is not None and current.alive and not (
            current.ready.done() and current.ready.exception() is not None
        ):
            return current
        if current is not None:
            self.retire(spec.name, revision)
        logs = self.data_dir / "logs" / spec.name
        crashes = current.crashes if current is not None else 0
        template = Template(
            function=spec.name, revision=revision, crashes=crashes,
            control=str(self.files.socket_dir(spec.name) / f"{spec.name}-{revision}.template.sock"),
            stdout_path=logs / f"template-{revision}.stdout.log",
            stderr_path=logs / f"template-{revision}.stderr.log",
        )
        self.by_revision[(spec.name, revision)] = template
        self._background(self._start(template, spec, base_dir, model_path))
        return template

    async def _start(self, template: Template, spec: FunctionSpec, base_dir: Path,
                     model_path: Path | None) -> None:
        assert spec.runtime.handler is not None
        plan = LaunchPlan(
            argv=[sys.executable, "-m", "torpor.runtime.template", "--handler", spec.runtime.handler,
                  "--dir", str(base_dir), "--control", template.control,
                  "--concurrency", str(spec.concurrency)],
            cwd=str(base_dir),
            env=function_env(spec, template.revision, model_path, self.files.home(spec.name)),
            stdout_path=template.stdout_path, stderr_path=template.stderr_path,
            user=self.files.owner(spec.name),  # before the template imports the user's module
        )
        if self.spare_cgroups is not None:
            cgroups = self.spare_cgroups(template, spec)
            if cgroups:
                plan.env[SPARE_CGROUPS_ENV] = ":".join(cgroups)
        try:
            template.handle = await processes.spawn(plan)
            await wait_listening(template.handle, Address.unix(template.control), self.clock,
                                 spec.initialize_timeout_s)
        except (StartFailed, OSError) as exc:
            if template.handle is not None:
                await processes.stop(template.handle, STOP_GRACE_S)
            template.ready.set_exception(
                StartFailed(f"template: {exc}", log_tail=tail(template.stderr_path)))
            template.ready.exception()  # retrieved here; waiters get it through ready()
            return
        template.ready.set_result(None)
        code = await template.handle.wait()
        key = (template.function, template.revision)
        if self.by_revision.get(key) is not template:
            return  # retired
        # 1 s, 2 s, 4 s ... between rebuilds of a template that keeps dying: never a hot loop.
        delay_s = min(2.0 ** template.crashes, 30.0)
        template.crashes += 1
        log.warning("template of %s revision %d exited with code %s; rebuilding in %gs",
                    template.function, template.revision, code, delay_s)
        await self.clock.sleep(delay_s)
        if self.by_revision.get(key) is template:
            self.ensure(spec, template.revision, base_dir, model_path)

    async def fork(self, template: Template, *, instance_id: str, socket_path: str,
                   stdout: Path, stderr: Path, timeout_s: float,
                   env: dict[str, str] | None = None,
                   next_cgroups: tuple[str, ...] = ()) -> ForkedHandle:
        """Fork an instance; ``env`` (its GPUs, its cgroups) is set in the child before setup();
        ``next_cgroups``: what the template's next spare joins ahead of time."""
        await asyncio.wait_for(asyncio.shield(template.ready), timeout_s)
        request = {"instance": instance_id, "socket": socket_path,
                   "env": {**(env or {}), "TORPOR_INSTANCE": instance_id},
                   "next_cgroups": list(next_cgroups)}
        try:
            reply = await self._ask(template.control, request, (stdout, stderr), timeout_s)
        except (OSError, ValueError, TimeoutError) as exc:
            raise StartFailed(f"template of {template.function} did not fork: {exc}",
                              log_tail=tail(template.stderr_path)) from None
        if "pid" not in reply:
            raise StartFailed(f"template of {template.function} could not fork: "
                              f"{reply.get('error', 'no answer')}", log_tail=tail(template.stderr_path))
        template.forks += 1
        if template.forks == 1 and reply.get("threads", 1) > 1:
            log.warning("template of %s had %d threads when it first forked: threads do not "
                        "survive fork(), so thread pools belong in setup(), not load()",
                        template.function, reply["threads"])
        return ForkedHandle(int(reply["pid"]))

    @staticmethod
    async def _ask(control: str, request: dict[str, Any], logs: tuple[Path, Path],
                   timeout_s: float) -> dict[str, Any]:
        """Send a fork request with the instance's log files as open descriptors (the server
        opens them: an instance running as another user could not, and must not, open paths in
        the server's log folder); the template's one-line JSON reply."""
        loop = asyncio.get_running_loop()
        logs[0].parent.mkdir(parents=True, exist_ok=True)
        fds = [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) for path in logs]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, control)
            # a few hundred bytes into an empty socket buffer: sent at once, never blocks
            socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], fds)
            data = b""
            while not data.endswith(b"\n"):
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout_s)
                if not chunk:
                    break
                data += chunk
        finally:
            sock.close()
            for fd in fds:
                os.close(fd)
        reply: dict[str, Any] = json.loads(data or b"{}")
        return reply

    def get(self, name: str, revision: int | None = None) -> Template | None:
        """The template of ``name``'s ``revision`` (``None``: its newest)."""
        if revision is not None:
            return self.by_revision.get((name, revision))
        revisions = [r for (function, r) in self.by_revision if function == name]
        return self.by_revision[(name, max(revisions))] if revisions else None

    def retire(self, name: str, revision: int | None = None) -> None:
        """Stop one revision's template (``None``: every template of the function)."""
        keys = [(f, r) for (f, r) in self.by_revision if f == name and revision in (None, r)]
        for key in keys:
            template = self.by_revision.pop(key)
            if not template.ready.done():
                template.ready.cancel()
            if template.handle is not None:
                self._background(self._stop(template.handle))

    async def _stop(self, handle: ProcessHandle) -> None:
        await processes.stop(handle, STOP_GRACE_S)

    async def shutdown(self) -> None:
        for name in {name for name, _ in self.by_revision}:
            self.retire(name)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
