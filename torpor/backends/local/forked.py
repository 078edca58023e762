"""Instances forked from a template: not our children by birth, ours by re-parenting.

The server makes itself a child subreaper, so a double-forked instance whose intermediate parent
exits is re-parented to the server. We watch it through a pidfd (readable when it exits) and collect
its exit status with ``waitid(P_PIDFD)``; the same interface as a spawned process's handle.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

_PR_SET_CHILD_SUBREAPER = 36


def enable_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only); True when it worked."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def forking_supported() -> bool:
    return sys.platform == "linux" and hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD")


class ForkedHandle:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._returncode: int | None = None
        self._pidfd: int | None = os.pidfd_open(pid)
        self._exited: asyncio.Future[int] | None = None

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        if self._returncode is not None:
            return self._returncode
        if self._exited is None:
            loop = asyncio.get_running_loop()
            self._exited = loop.create_future()
            assert self._pidfd is not None
            loop.add_reader(self._pidfd, self._on_exit)
        return await asyncio.shield(self._exited)

    def _on_exit(self) -> None:
        assert self._pidfd is not None and self._exited is not None
        asyncio.get_running_loop().remove_reader(self._pidfd)
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED)
            code = -1 if info is None else (
                info.si_status if info.si_code == os.CLD_EXITED else -info.si_status)
        except ChildProcessError:  # not re-parented to us (no subreaper): status unknown
            code = -1
        os.close(self._pidfd)
        self._pidfd = None
        self._returncode = code
        if not self._exited.done():
            self._exited.set_result(code)

    def signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
