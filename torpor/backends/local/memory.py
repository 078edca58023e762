"""How much memory a local process holds, for ``/metrics`` and ``torpor get`` (templates)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_memory_bytes(pid: int) -> int:
    """Memory a process and its children hold (a template and its spare): proportional set size
    where the kernel reports it (pages shared after fork() counted once), else resident size."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    return sum(_memory_of(p) for p in pids)


def _memory_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
