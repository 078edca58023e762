"""An instance's first act: enter the cgroups that hold its CPU and memory limits.

The server makes the cgroups (``torpor.backends.local.limits``); the instance joins them itself,
before any of the user's code runs, so every page it touches is charged to its own limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

CGROUPS_ENV = "TORPOR_CGROUPS"  # ':'-separated cgroup.procs files a forked instance joins
SPARE_CGROUPS_ENV = "TORPOR_SPARE_CGROUPS"  # the ones a template's first spare joins ahead of time


def join(procs_files: Iterable[str]) -> None:
    """Move the calling process into each cgroup (async-signal-safe enough for a preexec_fn).

    A cgroup it is already in (a forked instance inherits its template's spare's, which joined it
    ahead of time) is skipped: moving a process costs an RCU grace period, ~10-25 ms on cgroup v1.
    """
    pid = str(os.getpid()).encode()
    for path in procs_files:
        try:
            with open(path, "rb") as members:
                if pid in members.read().split():
                    continue
        except OSError:
            pass
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def join_from_env() -> None:
    """Join the cgroups named in ``TORPOR_CGROUPS`` (set by the server for a forked instance)."""
    value = os.environ.pop(CGROUPS_ENV, "")
    if value:
        join(value.split(":"))
