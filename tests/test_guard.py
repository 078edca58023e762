"""The guard stops exactly the processes a dead server left, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from torpor.backends.local import guard
from torpor.backends.local.guard import clean_up, server_processes

FREEZER = Path("/sys/fs/cgroup/freezer")


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

    def test_leaves_the_cgroups_of_a_server_restarted_meanwhile(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A supervisor restarts the server at once: while the guard waits for the dead server's
        cgroups to empty, the new one (same data dir, same base) makes its own below the same base.
        The guard removes the dead server's empty cgroups and leaves the new server's alone."""
        if not (FREEZER / "cgroup.procs").exists() or not os.access(FREEZER, os.W_OK):
            pytest.skip("needs a writable cgroup v1 freezer hierarchy (root)")
        base = FREEZER / f"torpor-guardtest-{os.getpid()}"
        busy, empty, new = base / "busy", base / "empty", base / "new"
        busy.mkdir(parents=True)
        empty.mkdir()
        lingering = sleeper({})  # keeps the dead server's "busy" cgroup busy: the guard waits
        (busy / "cgroup.procs").write_text(str(lingering.pid))
        monkeypatch.setattr(guard, "EXIT_WAIT_S", 1.0)

        def restart() -> None:  # the new server's first cgroup, while the guard waits
            time.sleep(0.3)
            new.mkdir()

        thread = threading.Thread(target=restart)
        thread.start()
        try:
            assert clean_up(4_000_003, base) == (2, 0)
            thread.join()
            assert not empty.exists()  # the dead server's, empty: removed
            assert busy.is_dir() and new.is_dir()  # still busy; the new server's
        finally:
            thread.join()
            lingering.kill()
            lingering.wait()
            for group in (busy, empty, new, base):
                for _ in range(100):
                    try:
                        group.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.01)
