"""The guard stops exactly the processes a dead server left, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from torpor.backends.local.guard import clean_up, server_processes


def sleeper(env_extra: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, **env_extra})


class TestGuard:
    def test_kills_only_the_servers_processes(self) -> None:
        """Processes marked with the server's pid go (even SIGSTOPped ones); others stay."""
        fake_server = 4_000_000  # no such pid: only the marker matters here
        mine = sleeper({"TORPOR_SERVER_PID": str(fake_server)})
        stopped = sleeper({"TORPOR_SERVER_PID": str(fake_server)})
        other = sleeper({"TORPOR_SERVER_PID": str(fake_server + 1)})
        unmarked = sleeper({})
        try:
            time.sleep(0.2)  # let exec finish so /proc/PID/environ is the child's
            stopped.send_signal(19)  # SIGSTOP
            assert sorted(server_processes(fake_server)) == sorted([mine.pid, stopped.pid])
            assert clean_up(fake_server, None) == (0, 2)
            assert mine.wait(5) == -9
            assert stopped.wait(5) == -9
            assert other.poll() is None and unmarked.poll() is None
        finally:
            for process in (mine, stopped, other, unmarked):
                process.kill()
                process.wait()

    def test_signals_through_pidfds_never_a_bare_pid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The guard holds a pidfd for each process it found before it reads its environment and
        signals through it: a pid that changes hands meanwhile (pids wrap around quickly on a busy
        machine) is never killed in its place. No bare ``os.kill`` is sent."""
        fake_server = 4_000_002
        mine = sleeper({"TORPOR_SERVER_PID": str(fake_server)})
        other = sleeper({})
        try:
            time.sleep(0.2)

            def no_bare_kill(pid: int, sig: int) -> None:
                raise AssertionError(f"os.kill({pid}, {sig}): a bare pid")

            monkeypatch.setattr(os, "kill", no_bare_kill)
            assert clean_up(fake_server, None) == (0, 1)
            monkeypatch.undo()
            assert mine.wait(5) == -9
            assert other.poll() is None
        finally:
            monkeypatch.undo()
            for process in (mine, other):
                process.kill()
                process.wait()
