"""``python -m torpor.backends.local.guard``: makes sure nothing outlives a torpor server that died.

A server stopped by SIGTERM stops its instances itself. One killed with SIGKILL cannot, and two kinds
of instance would then survive it: a frozen one (a cgroup-v1-frozen process receives no signal, not
even SIGKILL, until thawed; a SIGSTOPped forked one cannot run the thread that watches the server),
and anything a command function started. The guard, a small process of its own session started with
the server, waits on the server's pidfd; when the server is gone it thaws the server's freezer
cgroups and kills every process whose environment carries that server's ``TORPOR_SERVER_PID``.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from pathlib import Path

EXIT_WAIT_S = 5.0


def server_processes(server_pid: int) -> list[int]:
    """Processes started for this server (instances, templates, their children)."""
    found = _marked(server_pid)
    for _, pidfd in found:
        os.close(pidfd)
    return [pid for pid, _ in found]


def _marked(server_pid: int) -> list[tuple[int, int]]:
    """(pid, pidfd) of each process started for this server. The pidfd is opened before the
    environment is read, so it names the very process that was checked: one that exits meanwhile
    and whose pid goes to another process (pids wrap around quickly on a busy machine) is never
    signalled in its place."""
    marker = f"TORPOR_SERVER_PID={server_pid}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            pidfd = os.pidfd_open(int(entry))
        except OSError:
            continue
        try:
            marked = marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            marked = False
        if marked:
            found.append((int(entry), pidfd))
        else:
            os.close(pidfd)
    return found


def groups_below(base: Path | None) -> list[Path]:
    """The cgroups below ``base`` now."""
    if base is None or not base.is_dir():
        return []
    return [group for group in base.iterdir() if group.is_dir()]


def thaw(groups: list[Path]) -> int:
    """Thaw each of ``groups`` (cgroup v1 or v2); returns how many there were."""
    for group in groups:
        for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            try:
                (group / name).write_text(value)
            except OSError:
                pass
    return len(groups)


def thaw_all(base: Path) -> int:
    """Thaw every cgroup below ``base``; returns how many there were."""
    return thaw(groups_below(base))


def _busy(groups: list[Path]) -> bool:
    for group in groups:
        try:
            if (group / "cgroup.procs").read_text().strip():
                return True
        except OSError:
            pass
    return False


def clean_up(server_pid: int, cgroup_base: Path | None,
             limit_bases: tuple[Path, ...] = ()) -> tuple[int, int]:
    """Thaw, then SIGKILL (SIGCONT first, for SIGSTOPped ones) what is left; remove the freezer
    cgroups and the instances' limit cgroups (``limit_bases``) once empty.

    Only the cgroups there were when the server died are thawed, waited for and removed: a server
    restarted on the same data dir (at once, by a supervisor) makes its own below the same bases
    meanwhile, and those are not ours. Returns (cgroups thawed, processes killed). A thawed instance
    usually exits by itself: it watches the server too, and only had to be able to run.
    """
    bases = ((cgroup_base,) if cgroup_base is not None else ()) + limit_bases
    left = {base: groups_below(base) for base in bases}  # the dead server's, as it left them
    thawed = thaw(left[cgroup_base]) if cgroup_base is not None else 0
    victims = _marked(server_pid)
    for _, pidfd in victims:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                break
        os.close(pidfd)
    deadline = time.monotonic() + EXIT_WAIT_S  # a cgroup can go only once it is empty
    for base, groups in left.items():
        while _busy(groups) and time.monotonic() < deadline:
            time.sleep(0.01)
        for group in groups:
            try:
                group.rmdir()
            except OSError:
                pass  # still busy
        try:
            base.rmdir()  # only when no server's cgroup is left below it
        except OSError:
            pass
    return thawed, len(victims)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torpor.backends.local.guard")
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--cgroup-base", type=Path, default=None)
    parser.add_argument("--limits-base", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the server is not for us
    try:
        pidfd = os.pidfd_open(args.server_pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is not None:
        select.select([pidfd], [], [])
    thawed, killed = clean_up(args.server_pid, args.cgroup_base, tuple(args.limits_base))
    if thawed or killed:
        print(f"torpor guard: server {args.server_pid} is gone; thawed {thawed} cgroup(s), "
              f"killed {killed} process(es) it left", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
