"""The local backend: instances as processes on this machine.

- A Python handler's instance is forked from its revision's template (``templates.py``) when the
  machine allows it (Linux with pidfds; the server becomes a child subreaper), else spawned.
- It listens on a Unix socket in ``run_dir``; a command function gets a loopback TCP port as ``PORT``.
- Idle mode freezes it with the best freezer there is (``freezer.py``: cgroup v2, v1, or SIGSTOP).
- Its ``memory_mb`` and ``cpus`` are enforced by a cgroup of its own (``limits.py``); a kill by the
  kernel's OOM killer ends it with ``out of memory (memory_mb N)``.
- It sees only the GPUs its placement gave it (``CUDA_VISIBLE_DEVICES``, ``TORPOR_GPU_MEMORY_MB``);
  the node's GPUs come from the server config or NVML (``nvml.py``).
- Its stdout and stderr go to ``DATA_DIR/logs/<function>/<instance>.{stdout,stderr}.log``.
- A guard process (``guard.py``) stops everything the server leaves if the server is SIGKILLed.
- Its environment is its spec's ``env`` and torpor's variables on a minimal base; when the server
  runs as root it runs as a user of its function's own, sees only its own files
  (``isolation.py``), and ``isolation: sandbox`` runs it under bubblewrap (``sandbox.py``).

Nothing above this package sees a pid, a socket path or a log file: only the
:class:`~torpor.backends.InstanceBackend` calls and an :class:`~torpor.address.Address`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from torpor.address import Address
from torpor.backends import (
    Exit,
    InstancePlan,
    NodeInfo,
    RevisionPlan,
    StartedInstance,
    StartFailed,
    UnknownInstance,
)
from torpor.backends.local import processes
from torpor.backends.local.forked import enable_subreaper, forking_supported
from torpor.backends.local.freezer import Freezer, make_freezer
from torpor.backends.local.isolation import (
    DEFAULT_UIDS,
    CheckProcess,
    Credentials,
    InstanceFiles,
    InstanceUsers,
)
from torpor.backends.local.launch import (
    free_port,
    launch_plan,
    listen_arg,
    placement_env,
    wait_listening,
)
from torpor.backends.local.limits import CGROUPS_ENV, Limits, make_limits
from torpor.backends.local.memory import process_memory_bytes
from torpor.backends.local.processes import InstanceProcess, drop_privileges, tail
from torpor.backends.local.sandbox import sandbox_argv, sandbox_problem
from torpor.backends.local.templates import Template, Templates
from torpor.clock import Clock
from torpor.constants import STOP_GRACE_S
from torpor.datadir import remove_socket, remove_sockets
from torpor.placement.gpus import GpuDevice
from torpor.spec import FunctionSpec

log = logging.getLogger(__name__)

NODE = "local"
POOL = "local"
_REMEMBERED_LOGS = 4096  # stderr paths kept for log_tail after an instance is gone


@dataclass
class _Process:
    handle: InstanceProcess
    memory_mb: int
    gpu_memory_mb: int = 0  # what its placement holds
    frozen: bool = False
    attached: bool = False  # under the freezer's cgroup
    socket: str | None = None  # its Unix socket, removed when it ends


def uses_template(plan: RevisionPlan) -> bool:
    runtime = plan.spec.runtime
    # a sandboxed instance gets a sandbox of its own: forks of one template would share its /tmp
    return runtime.handler is not None and runtime.templates and plan.spec.isolation != "sandbox"


class LocalBackend:
    name = "local"
    places_gpus = False  # the reconciler places GPU instances on this machine's devices

    def __init__(self, data_dir: Path, clock: Clock, *, templates: bool | None = None,
                 freezer: Freezer | None = None, gpus: tuple[GpuDevice, ...] = (),
                 limits: Limits | None = None, listen_host: str | None = None,
                 instance_user: str = "auto",
                 instance_uids: tuple[int, int] = DEFAULT_UIDS) -> None:
        """``gpus``: this node's devices (NVML or the server config); ``listen_host``: instances
        listen on this IP and a free TCP port instead of a Unix socket (the Ray backend's node
        agent: the gateway is on another machine); ``instance_user``, ``instance_uids``: who
        instances run as when the server is root (:class:`InstanceUsers`)."""
        self.data_dir = data_dir
        self.listen_host = listen_host
        self.clock = clock
        self.run_dir = socket_dir(data_dir)
        remove_sockets(self.run_dir)  # a crashed server's or instance's: none is in use now
        self.users = InstanceUsers(data_dir, instance_user, instance_uids)
        self.files = InstanceFiles(data_dir, self.run_dir, self.users)
        self._sandbox_ok = False
        self.freezer = freezer or make_freezer(data_dir)
        self.gpus = gpus
        if limits is None:
            v2_base = self.freezer.base if self.freezer.name == "cgroup-v2" else None
            limits = make_limits(cgroup_tag(data_dir), v2_base)
        self.limits = limits
        if templates is None:
            templates = forking_supported() and enable_subreaper()
        self.templates = Templates(data_dir, self.run_dir, clock, self._next_spare_cgroups,
                                   self.files) if templates else None
        self._processes: dict[str, _Process] = {}
        self._stderr: OrderedDict[str, Path] = OrderedDict()
        self._ended: OrderedDict[str, Exit] = OrderedDict()  # for a wait() after stop()

    # lifetime ----------------------------------------------------------------------------------

    async def startup(self) -> None:
        self._start_guard()

    def _start_guard(self) -> None:
        """A process of its own that stops whatever this server leaves if it is killed (SIGKILL)."""
        if sys.platform != "linux" or not hasattr(os, "pidfd_open"):
            return
        args = [sys.executable, "-m", "torpor.backends.local.guard", "--server-pid", str(os.getpid())]
        if self.freezer.base is not None:
            args += ["--cgroup-base", str(self.freezer.base)]
        for base in self.limits.bases:
            if base != self.freezer.base:  # v2 shares the freezer's folder
                args += ["--limits-base", str(base)]
        log_path = self.data_dir / "logs" / "guard.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                             start_new_session=True)

    async def shutdown(self) -> None:
        if self.templates is not None:
            await self.templates.shutdown()
        self.freezer.close()
        self.limits.close()
        remove_sockets(self.run_dir)

    # revisions ---------------------------------------------------------------------------------

    def prepare(self, plan: RevisionPlan) -> None:
        """Build the revision's template at deploy, so the first cold start only forks."""
        if self.templates is None:
            return
        if uses_template(plan):
            try:
                code, model = self.files.stage(plan.function, plan.code.path, _model_path(plan))
            except OSError as exc:  # the first cold start says it again, as a StartFailed
                log.warning("%s: no template: cannot prepare its files: %s", plan.function, exc)
                return
            self.templates.ensure(plan.spec, plan.revision, code, model)
        else:
            self.templates.retire(plan.function, plan.revision)

    def retire(self, function: str, revision: int | None = None) -> None:
        if self.templates is None:
            return
        spares = [t.spare_cgroup for (f, r), t in self.templates.by_revision.items()
                  if f == function and revision in (None, r) and t.spare_cgroup is not None]
        self.templates.retire(function, revision)
        if spares:  # empty once the template (and so its spare) has stopped
            loop = asyncio.get_running_loop()
            for name in spares:
                loop.call_later(STOP_GRACE_S + 1.0, self.limits.release, name)

    @contextlib.contextmanager
    def check_process(self, spec: FunctionSpec, code_dir: Path) -> Iterator[CheckProcess]:
        """How the deploy check imports the handler: as the function's instances would run it
        (as root: a user no function has, on a copy of the code; in its sandbox)."""
        checker = self.users.checker
        with self.files.check_copy(code_dir) as code:
            wrap = None
            if spec.isolation == "sandbox":
                wrap = partial(sandbox_argv, cwd=str(code), network=spec.network, writable=[],
                               readable=[str(code)])
            yield CheckProcess(code, home="/tmp" if checker is not None else None,
                               preexec=partial(drop_privileges, checker) if checker else None,
                               wrap=wrap)

    def sandbox_problem(self) -> str | None:
        """Why ``isolation: sandbox`` cannot run here (None: it can), checked as the user
        instances run as; a success is remembered, a failure asked again next time."""
        if self._sandbox_ok:
            return None
        user = self.users.checker  # a uid of the range, as a function's would be
        problem = sandbox_problem(None if user is None else partial(drop_privileges, user))
        self._sandbox_ok = problem is None
        return problem

    def function_info(self, function: str, revision: int | None = None) -> dict[str, Any] | None:
        template = self.templates.get(function, revision) if self.templates is not None else None
        if template is None:
            return None
        info: dict[str, Any] = template.to_api()
        if template.handle is not None and template.alive:  # the template and its spare
            info["memory_bytes"] = process_memory_bytes(template.handle.pid)
        return info

    # instances ---------------------------------------------------------------------------------

    async def start(self, plan: InstancePlan) -> StartedInstance:
        revision, spec, instance_id = plan.revision, plan.spec, plan.instance_id
        logs = self.data_dir / "logs" / revision.function
        stdout, stderr = logs / f"{instance_id}.stdout.log", logs / f"{instance_id}.stderr.log"
        self._remember_log(instance_id, stderr)
        try:
            user = self.files.owner(spec.name)
            if self.files.staged(spec.name, revision.code.path, _model_path(revision)):
                code, model = self.files.stage(spec.name, revision.code.path, _model_path(revision))
            else:  # a copy of its code: off the event loop
                code, model = await asyncio.to_thread(self.files.stage, spec.name,
                                                      revision.code.path, _model_path(revision))
        except OSError as exc:  # no uid left, a full disk
            raise StartFailed(f"cannot prepare the instance's files: {exc}") from None
        host = self.listen_host or "127.0.0.1"
        if spec.runtime.command is not None:
            address = Address.tcp(host, spec.runtime.port or free_port(host))
        elif self.listen_host is not None:
            if spec.isolation == "sandbox" and not spec.network:
                raise StartFailed("isolation: sandbox without network: true cannot be reached on "
                                  "this node (instances listen on TCP here); set network: true")
            address = Address.tcp(host, free_port(host))
        else:
            socket_path = self.files.socket_dir(spec.name) / f"{instance_id}.sock"
            address = Address.unix(str(socket_path))
        forked = self.templates is not None and uses_template(revision)
        env = placement_env(plan.placement, self.gpus)
        template = None
        if forked:
            assert self.templates is not None
            template = self.templates.ensure(spec, revision.revision, code, model)
        cgroups = self._instance_cgroups(instance_id, spec, template)
        if template is not None:
            assert self.templates is not None
            if cgroups:
                env[CGROUPS_ENV] = ":".join(cgroups)
                if user is not None:  # the forked child (already the user) joins them itself
                    _give(cgroups, user)
            next_cgroups = self._next_spare_cgroups(template, spec)
            try:
                handle: InstanceProcess = await self.templates.fork(
                    template, instance_id=instance_id, socket_path=listen_arg(address),
                    stdout=stdout, stderr=stderr, timeout_s=spec.initialize_timeout_s, env=env,
                    next_cgroups=next_cgroups)
            except BaseException:
                self.limits.release(instance_id)
                raise
            if user is not None and cgroups:  # where it could not join them itself (v2)
                _join_from_outside(handle.pid, cgroups)
        else:
            joins = cgroups
            if spec.scaling.idle_mode:  # frozen with whatever it starts at once (bwrap forks)
                try:
                    frozen_with = self.freezer.prepare(instance_id)
                except OSError as exc:
                    log.warning("cannot prepare %s's freezer cgroup: %s", instance_id, exc)
                    frozen_with = None
                joins = cgroups + ((frozen_with,) if frozen_with else ())
            launch = launch_plan(spec, revision.revision, code, instance_id, address,
                                 (stdout, stderr), model, env, joins,
                                 self.files.home(spec.name), user)
            try:
                handle = await processes.spawn(launch)
            except OSError as exc:
                self.limits.release(instance_id)
                raise StartFailed(f"could not run {launch.argv[0]!r}: {exc}") from None
        held = plan.placement.gpu_memory_mb if plan.placement is not None else 0
        process = self._processes[instance_id] = _Process(handle, spec.resources.memory_mb, held,
                                                          socket=address.unix_socket)
        if spec.scaling.idle_mode:
            try:  # before it can start children, so a freeze stops them too
                self.freezer.attach(instance_id, handle.pid)
                process.attached = True
            except OSError as exc:
                log.warning("cannot attach %s to the freezer: %s", instance_id, exc)
        try:
            await wait_listening(handle, address, self.clock, spec.initialize_timeout_s)
        except StartFailed as exc:
            exit_ = await self.stop(instance_id, 0.0)
            raise StartFailed(exit_.reason or str(exc), log_tail=tail(stderr)) from None
        return StartedInstance(address=address, node=NODE, pool=POOL, forked=forked,
                               detail={"pid": handle.pid, "stdout_log": str(stdout),
                                       "stderr_log": str(stderr)})

    def instance_ids(self) -> list[str]:
        """The instances this backend runs now."""
        return list(self._processes)

    def _instance_cgroups(self, instance_id: str, spec: FunctionSpec,
                          template: Template | None) -> tuple[str, ...]:
        """The instance's limit cgroups. A forked instance takes over the cgroup its template's
        spare joined ahead of time (renamed to the instance's id: no process moves on the cold
        start's path); otherwise, or where cgroups cannot be renamed, new ones it joins itself."""
        spare = template.spare_cgroup if template is not None else None
        if template is not None:
            template.spare_cgroup = None
        if spare is not None:
            renamed = self.limits.rename(spare, instance_id)
            if renamed:
                return renamed
            self.limits.release(spare)
        try:
            return self.limits.prepare(instance_id, spec.resources.memory_mb, spec.resources.cpus)
        except OSError as exc:
            log.warning("instance %s runs without limits: %s", instance_id, exc)
            return ()

    def _next_spare_cgroups(self, template: Template, spec: FunctionSpec) -> tuple[str, ...]:
        """Limit cgroups for the instance after this one, which the template's next spare joins
        while it waits (cgroup v1 only: v2 cannot rename them onto the instance)."""
        if self.limits.name != "cgroup-v1":
            return ()
        name = f"spare-{template.function}-{template.revision}-{secrets.token_hex(3)}"
        try:
            cgroups = self.limits.prepare(name, spec.resources.memory_mb, spec.resources.cpus)
            user = self.files.owner(spec.name)
            if user is not None:  # the spare runs as the function's user and joins them itself
                _give(cgroups, user)
        except OSError:
            return ()
        template.spare_cgroup = name
        return cgroups

    def _process(self, instance_id: str) -> _Process:
        process = self._processes.get(instance_id)
        if process is None:
            raise UnknownInstance(f"no local instance {instance_id!r}")
        return process

    async def wait(self, instance_id: str) -> Exit:
        process = self._processes.get(instance_id)
        if process is None:
            ended = self._ended.get(instance_id)
            if ended is None:
                raise UnknownInstance(f"no local instance {instance_id!r}")
            return ended
        code = await process.handle.wait()
        return self._forget(instance_id, code)

    async def stop(self, instance_id: str, grace_s: float) -> Exit:
        process = self._processes.get(instance_id)
        if process is None:
            return Exit(None)
        if process.frozen:  # a frozen process cannot act on SIGTERM: thaw it first
            await self.thaw(instance_id)
        code = await processes.stop(process.handle, grace_s)
        return self._forget(instance_id, code)

    def _forget(self, instance_id: str, code: int | None) -> Exit:
        """Record how the instance ended (asking its cgroup whether the OOM killer ended it)."""
        process = self._processes.pop(instance_id, None)
        if process is None:
            return self._ended.get(instance_id, Exit(code))
        if process.socket is not None:
            remove_socket(process.socket)  # a crashed one's too
        reason = None
        if self.limits.oom_killed(instance_id):
            reason = f"out of memory (memory_mb {process.memory_mb})"
        exit_ = Exit(code, reason)
        if process.attached:
            self.freezer.release(instance_id)
        self.limits.release(instance_id)
        self._ended[instance_id] = exit_
        while len(self._ended) > _REMEMBERED_LOGS:
            self._ended.popitem(last=False)
        return exit_

    async def freeze(self, instance_id: str) -> None:
        process = self._process(instance_id)
        await self.freezer.freeze(instance_id, process.handle.pid)
        process.frozen = True

    async def thaw(self, instance_id: str) -> None:
        process = self._process(instance_id)
        if process.frozen:
            await self.freezer.thaw(instance_id, process.handle.pid)
            process.frozen = False

    def _remember_log(self, instance_id: str, path: Path) -> None:
        self._stderr[instance_id] = path
        while len(self._stderr) > _REMEMBERED_LOGS:
            self._stderr.popitem(last=False)

    def log_tail(self, instance_id: str, max_lines: int = 20) -> str:
        path = self._stderr.get(instance_id)
        return tail(path, max_lines=max_lines) if path is not None else ""

    # facts -------------------------------------------------------------------------------------

    def instance_pids(self) -> dict[int, str]:
        """Each live instance's pid (its session's leader) → its id, for the NVML source."""
        return {p.handle.pid: instance_id for instance_id, p in self._processes.items()}

    @property
    def pool_priorities(self) -> dict[str, int]:
        return {POOL: 0}

    def health(self) -> dict[str, Any]:
        return {"backend": self.name, "freezer": self.freezer.name, "limits": self.limits.name,
                "templates": self.templates is not None, "gpus": len(self.gpus),
                "instance_user": self.users.describe()}

    def nodes(self) -> list[NodeInfo]:
        total = {"cpus": float(os.cpu_count() or 1), "gpus": float(len(self.gpus)),
                 "gpu_memory_mb": float(sum(d.memory_mb for d in self.gpus))}
        return [NodeInfo(id=NODE, address=socket.gethostname(), pool=POOL,
                         resources_total=total,
                         resources_allocated={
                             "instances": float(len(self._processes)),
                             "gpu_memory_mb": float(sum(p.gpu_memory_mb
                                                        for p in self._processes.values()))},
                         gpus=self.gpus)]


def _give(procs_files: tuple[str, ...], user: Credentials) -> None:
    """Let ``user`` move its own process into these cgroups (cgroup v1 asks only for write access
    to ``cgroup.procs`` and the same uid)."""
    for path in procs_files:
        os.chown(path, user.uid, user.gid)
        group = Path(path).parent
        for folder in (group, group.parent):  # made under the server's umask (077): let it cross
            if stat.S_IMODE(folder.stat().st_mode) != 0o711:
                os.chmod(folder, 0o711)


def _join_from_outside(pid: int, procs_files: tuple[str, ...]) -> None:
    """Move ``pid`` into the cgroups it is not in yet, as root: cgroup v2 also asks the mover for
    write access to the common ancestor's ``cgroup.procs``, which the instance's user has not
    (on v1 a forked instance is in them already, through its spare: a read, no move)."""
    for path in procs_files:
        try:
            with open(path, "rb") as members:
                if str(pid).encode() in members.read().split():
                    continue
            with open(path, "wb") as procs:
                procs.write(str(pid).encode())
        except OSError as exc:
            log.warning("cannot move %d into %s: %s", pid, path, exc)


def _model_path(plan: RevisionPlan) -> Path | None:
    return plan.model.path if plan.model is not None else None


def cgroup_tag(data_dir: Path) -> str:
    """This server's cgroups are named after its data dir (the freezer's too)."""
    return "torpor-" + hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]


def socket_dir(data_dir: Path) -> Path:
    """Unix socket paths are limited to ~107 bytes; deep data dirs get a short twin in /tmp."""
    run_dir = data_dir / "run"
    if len(str(run_dir)) > 60:
        digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:12]
        run_dir = Path(tempfile.gettempdir()) / f"torpor-{digest}"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.chmod(0o700)
    return run_dir
