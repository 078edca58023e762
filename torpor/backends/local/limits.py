"""CPU and memory limits for local instances: a cgroup per instance with ``memory_mb`` as its memory
limit and ``cpus`` as its CPU quota (``cpus × 100 ms`` of CPU time per 100 ms period).

- cgroup v2: ``<our cgroup's parent>/torpor-<id>/<instance>/{memory.max, cpu.max}`` (the same
  folder the v2 freezer uses); an OOM kill shows as ``oom_kill N`` in ``memory.events``;
- cgroup v1: ``/sys/fs/cgroup/memory/torpor-<id>/<instance>/memory.limit_in_bytes`` and
  ``/sys/fs/cgroup/cpu/torpor-<id>/<instance>/cpu.cfs_quota_us``; ``oom_kill N`` in
  ``memory.oom_control``;
- neither writable: :class:`NoLimits`, and the server says so once at start.

An instance joins its cgroups itself, before it runs any of the user's code: a spawned process
between fork and exec, a forked one in the template's child before ``setup()``. Memory a process
touched before it moved would stay charged to its old cgroup, so attaching from outside afterwards
would let ``setup()`` escape the limit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from torpor.backends.local.freezer import CGROUP_ROOT, remove_groups
from torpor.runtime.cgroups import CGROUPS_ENV, join

__all__ = ["CGROUPS_ENV", "CgroupV1Limits", "CgroupV2Limits", "Limits", "NoLimits", "join",
           "make_limits"]

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000  # the kernel's default CFS period: 100 ms


class Limits(Protocol):
    name: str
    bases: tuple[Path, ...]  # this server's limit cgroups (the guard removes them after a SIGKILL)

    def prepare(self, instance_id: str, memory_mb: int, cpus: float) -> tuple[str, ...]:
        """Make the instance's cgroups with their limits; the ``cgroup.procs`` files to join."""

    def rename(self, old: str, new: str) -> tuple[str, ...]:
        """Rename a prepared cgroup (e.g. a template's spare's) to ``new``; its ``cgroup.procs``
        files, or () where cgroups cannot be renamed (cgroup v2) or the rename failed."""

    def oom_killed(self, instance_id: str) -> bool:
        """Whether the kernel killed a process of the instance for passing its memory limit."""

    def release(self, instance_id: str) -> None: ...

    def close(self) -> None: ...


class NoLimits:
    name = "none"
    bases: tuple[Path, ...] = ()

    def prepare(self, instance_id: str, memory_mb: int, cpus: float) -> tuple[str, ...]:
        return ()

    def rename(self, old: str, new: str) -> tuple[str, ...]:
        return ()

    def oom_killed(self, instance_id: str) -> bool:
        return False

    def release(self, instance_id: str) -> None:
        pass

    def close(self) -> None:
        pass


def _counter(path: Path, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (0 when absent or unreadable)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


class CgroupV1Limits:
    name = "cgroup-v1"

    def __init__(self, memory_base: Path, cpu_base: Path) -> None:
        self.memory_base, self.cpu_base = memory_base, cpu_base
        self.bases: tuple[Path, ...] = (memory_base, cpu_base)
        memory_base.mkdir(exist_ok=True)
        cpu_base.mkdir(exist_ok=True)

    def prepare(self, instance_id: str, memory_mb: int, cpus: float) -> tuple[str, ...]:
        memory, cpu = self.memory_base / instance_id, self.cpu_base / instance_id
        memory.mkdir(exist_ok=True)
        cpu.mkdir(exist_ok=True)
        limit = str(memory_mb * 1024 * 1024)
        (memory / "memory.limit_in_bytes").write_text(limit)
        try:  # memory + swap: no swapping past the limit either (absent without swap accounting)
            (memory / "memory.memsw.limit_in_bytes").write_text(limit)
        except OSError:
            pass
        (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(int(cpus * CPU_PERIOD_US)))
        return str(memory / "cgroup.procs"), str(cpu / "cgroup.procs")

    def rename(self, old: str, new: str) -> tuple[str, ...]:
        """cgroup v1 renames a cgroup in place, with its processes and limits (no migration)."""
        done: list[Path] = []
        try:
            for base in (self.memory_base, self.cpu_base):
                (base / old).rename(base / new)
                done.append(base)
        except OSError:
            for base in done:
                try:
                    (base / new).rename(base / old)
                except OSError:
                    pass
            return ()
        return (str(self.memory_base / new / "cgroup.procs"),
                str(self.cpu_base / new / "cgroup.procs"))

    def oom_killed(self, instance_id: str) -> bool:
        return _counter(self.memory_base / instance_id / "memory.oom_control", "oom_kill") > 0

    def release(self, instance_id: str) -> None:
        for base in (self.memory_base, self.cpu_base):
            try:
                (base / instance_id).rmdir()
            except OSError:
                pass

    def close(self) -> None:
        remove_groups(self.memory_base)
        remove_groups(self.cpu_base)


class CgroupV2Limits:
    name = "cgroup-v2"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.bases: tuple[Path, ...] = (base,)
        base.mkdir(exist_ok=True)
        (base / "cgroup.subtree_control").write_text("+memory +cpu")

    def prepare(self, instance_id: str, memory_mb: int, cpus: float) -> tuple[str, ...]:
        group = self.base / instance_id
        group.mkdir(exist_ok=True)
        (group / "memory.max").write_text(str(memory_mb * 1024 * 1024))
        try:
            (group / "memory.swap.max").write_text("0")
        except OSError:
            pass
        (group / "cpu.max").write_text(f"{int(cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
        return (str(group / "cgroup.procs"),)

    def rename(self, old: str, new: str) -> tuple[str, ...]:
        return ()  # cgroup v2 does not rename cgroups: the instance joins its own

    def oom_killed(self, instance_id: str) -> bool:
        return _counter(self.base / instance_id / "memory.events", "oom_kill") > 0

    def release(self, instance_id: str) -> None:
        try:
            (self.base / instance_id).rmdir()
        except OSError:
            pass

    def close(self) -> None:
        remove_groups(self.base)


def make_limits(tag: str, base_v2: Path | None) -> Limits:
    """Cgroup limits when this machine lets us write them; else :class:`NoLimits`, said once.

    ``tag`` names this server's cgroups (``torpor-<hash of the data dir>``); ``base_v2`` is the v2
    folder the freezer uses, when it uses one.
    """
    try:
        if base_v2 is not None:
            return CgroupV2Limits(base_v2)
        memory, cpu = CGROUP_ROOT / "memory", CGROUP_ROOT / "cpu"
        if (memory / "cgroup.procs").exists() and (cpu / "cgroup.procs").exists():
            limits = CgroupV1Limits(memory / tag, cpu / tag)
            probe = limits.prepare("probe", 64, 1.0)
            limits.release("probe")
            if probe:
                return limits
    except OSError as exc:
        log.warning("instances run without CPU and memory limits: cannot write cgroups (%s)", exc)
        return NoLimits()
    log.warning("instances run without CPU and memory limits: no writable cgroup v2 or v1 "
                "memory and cpu controllers")
    return NoLimits()
