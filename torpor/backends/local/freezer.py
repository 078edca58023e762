"""Freezing instances so they use no CPU: the cgroup freezer where we can make a cgroup, SIGSTOP else.

- cgroup v2: ``<our cgroup>/torpor-<id>/<instance>/cgroup.freeze`` (``1``/``0``), done when
  ``cgroup.events`` says ``frozen 1``;
- cgroup v1: ``/sys/fs/cgroup/freezer/torpor-<id>/<instance>/freezer.state`` (``FROZEN``/``THAWED``);
- otherwise ``SIGSTOP``/``SIGCONT`` to the instance's process group.

The cgroup freezers stop every process the instance started (a command function's workers too) and,
unlike SIGSTOP, cannot be undone by anyone but us.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path
from typing import Protocol

CGROUP_ROOT = Path("/sys/fs/cgroup")
POLL_S = 0.0005


class Freezer(Protocol):
    name: str
    base: Path | None  # the cgroup holding this server's instances, if it uses one

    def prepare(self, instance_id: str) -> str | None:
        """The ``cgroup.procs`` file a spawned instance joins before exec (so whatever it starts
        at once is frozen with it), or None (a signal freezer needs nothing)."""

    def attach(self, instance_id: str, pid: int) -> None: ...

    async def freeze(self, instance_id: str, pid: int) -> None: ...

    async def thaw(self, instance_id: str, pid: int) -> None: ...

    def release(self, instance_id: str) -> None: ...

    def close(self) -> None: ...


class SignalFreezer:
    name = "signal"
    base: Path | None = None

    def prepare(self, instance_id: str) -> str | None:
        return None

    def attach(self, instance_id: str, pid: int) -> None:
        pass

    async def freeze(self, instance_id: str, pid: int) -> None:
        os.killpg(pid, signal.SIGSTOP)

    async def thaw(self, instance_id: str, pid: int) -> None:
        os.killpg(pid, signal.SIGCONT)

    def release(self, instance_id: str) -> None:
        pass

    def close(self) -> None:
        pass


class _CgroupFreezer:
    name = "cgroup"

    def __init__(self, base: Path) -> None:
        self.root = base
        self.base: Path | None = base
        base.mkdir(exist_ok=True)

    def _dir(self, instance_id: str) -> Path:
        return self.root / instance_id

    def prepare(self, instance_id: str) -> str | None:
        path = self._dir(instance_id)
        path.mkdir(exist_ok=True)
        return str(path / "cgroup.procs")

    def attach(self, instance_id: str, pid: int) -> None:
        procs = self._dir(instance_id) / "cgroup.procs"
        if procs.exists() and str(pid) in procs.read_text().split():
            return  # joined before exec (prepare)
        self._dir(instance_id).mkdir(exist_ok=True)
        procs.write_text(str(pid))

    def release(self, instance_id: str) -> None:
        try:
            self._dir(instance_id).rmdir()
        except OSError:
            pass

    def close(self) -> None:
        """At shutdown, after every instance has exited: remove this server's cgroups."""
        remove_groups(self.root)

    async def _until(self, path: Path, expected: str, timeout_s: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while expected not in path.read_text():
            if loop.time() > deadline:
                raise TimeoutError(f"{path} did not reach {expected!r} in {timeout_s}s")
            await asyncio.sleep(POLL_S)


class CgroupV2Freezer(_CgroupFreezer):
    name = "cgroup-v2"

    async def freeze(self, instance_id: str, pid: int) -> None:
        (self._dir(instance_id) / "cgroup.freeze").write_text("1")
        await self._until(self._dir(instance_id) / "cgroup.events", "frozen 1")

    async def thaw(self, instance_id: str, pid: int) -> None:
        (self._dir(instance_id) / "cgroup.freeze").write_text("0")
        await self._until(self._dir(instance_id) / "cgroup.events", "frozen 0")


class CgroupV1Freezer(_CgroupFreezer):
    name = "cgroup-v1"

    async def freeze(self, instance_id: str, pid: int) -> None:
        (self._dir(instance_id) / "freezer.state").write_text("FROZEN")
        await self._until(self._dir(instance_id) / "freezer.state", "FROZEN")

    async def thaw(self, instance_id: str, pid: int) -> None:
        (self._dir(instance_id) / "freezer.state").write_text("THAWED")
        await self._until(self._dir(instance_id) / "freezer.state", "THAWED")


def remove_groups(base: Path) -> None:
    """Remove the (empty) cgroups below ``base``, then ``base``; busy ones stay."""
    if not base.is_dir():
        return
    for group in base.iterdir():
        if group.is_dir():
            try:
                group.rmdir()
            except OSError:
                pass
    try:
        base.rmdir()
    except OSError:
        pass


def make_freezer(data_dir: Path, prefer: str = "auto") -> Freezer:
    """The best freezer this machine lets us use (``prefer``: auto, cgroup or signal)."""
    if prefer == "signal":
        return SignalFreezer()
    tag = "torpor-" + hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    for attempt in (_v2, _v1):
        try:
            freezer = attempt(tag)
        except OSError:
            continue
        if freezer is not None:
            return freezer
    return SignalFreezer()


def _v2(tag: str) -> Freezer | None:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    own = Path("/proc/self/cgroup").read_text().strip().splitlines()
    relative = next((line.split(":", 2)[2] for line in own if line.startswith("0::")), None)
    if relative is None:
        return None
    # A sibling of our own cgroup (a process may not be in an inner node with children).
    parent = (CGROUP_ROOT / relative.lstrip("/")).parent
    base = parent / tag
    freezer = CgroupV2Freezer(base)
    probe = base / "probe"
    probe.mkdir(exist_ok=True)
    ok = (probe / "cgroup.freeze").exists()
    probe.rmdir()
    return freezer if ok else None


def _v1(tag: str) -> Freezer | None:
    root = CGROUP_ROOT / "freezer"
    if not (root / "cgroup.procs").exists():
        return None
    return CgroupV1Freezer(root / tag)
