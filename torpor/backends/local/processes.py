"""Spawning and stopping local processes (instances and templates).

Each instance runs in its own session (process group), so stopping it also stops whatever its command
started; on Linux it also gets ``PR_SET_PDEATHSIG`` so it dies with the server even if the server is
killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from torpor.backends.local.isolation import Credentials
from torpor.runtime.cgroups import join as join_cgroups

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    cwd: str
    stdout_path: Path
    stderr_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cgroups: tuple[str, ...] = ()  # cgroup.procs files the process joins before exec
    user: Credentials | None = None  # who it runs as (None: the server's user)


class InstanceProcess(Protocol):
    """A process of ours, spawned or forked."""

    pid: int

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def signal_group(self, sig: signal.Signals) -> None: ...


class ProcessHandle:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    async def wait(self) -> int:
        return await self._process.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


async def spawn(plan: LaunchPlan) -> ProcessHandle:
    """Start ``plan`` in its own session, dying with the server (PDEATHSIG) on Linux."""
    plan.stdout_path.parent.mkdir(parents=True, exist_ok=True)
    with open(plan.stdout_path, "ab") as out, open(plan.stderr_path, "ab") as err:
        process = await asyncio.create_subprocess_exec(
            *plan.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=plan.cwd,
            env=plan.env,
            start_new_session=True,
            preexec_fn=_preexec(plan.cgroups, plan.user) if sys.platform == "linux" else None,
        )
    return ProcessHandle(process)


async def stop(handle: InstanceProcess, grace_s: float) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; the exit code."""
    if handle.returncode is None:
        handle.signal_group(signal.SIGTERM)
        try:
            return await asyncio.wait_for(handle.wait(), grace_s)
        except TimeoutError:
            pass
    handle.signal_group(signal.SIGKILL)
    return await handle.wait()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def drop_privileges(user: Credentials) -> None:
    """Become ``user`` for good (no supplementary groups; real, effective and saved ids)."""
    os.setgroups([])
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)


def _preexec(cgroups: tuple[str, ...], user: Credentials | None = None) -> Callable[[], None]:
    """Between fork and exec: enter the instance's cgroups (so all of its memory is charged to its
    limit from the first page), become its user, and die with the server (after the user change,
    which clears the parent-death signal)."""

    def run() -> None:
        join_cgroups(cgroups)
        if user is not None:
            drop_privileges(user)
        _die_with_parent()

    return run


def tail(path: Path, max_lines: int = 20, max_bytes: int = 16384) -> str:
    """The last lines of a log file (what a failed cold start shows the user)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").rstrip().splitlines()
    return "\n".join(lines[-max_lines:])
