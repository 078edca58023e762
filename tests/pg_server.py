"""A real PostgreSQL server for the store's tests, started in a temporary directory.

Debian's ``postgresql`` package (``make test-deps``) keeps ``initdb`` and ``pg_ctl`` in
``/usr/lib/postgresql/VERSION/bin``. PostgreSQL refuses to run as root, so as root the cluster is
made and run as the ``postgres`` user (the package creates it). It listens on 127.0.0.1 on a free
port, with its socket in its own directory under /tmp; each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

USER = "torpor"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL's bin folder holding initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda path: int(Path(path).parent.parent.name)
                   if Path(path).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).resolve().parent if pg_ctl else None


class PostgresServer:
    """``start()`` runs initdb and pg_ctl; ``url(db)`` a URL to a database ``create(db)`` made."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="torpor-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.log = self.root / "postgres.log"
        self._run_as: Callable[[], None] | None = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")  # KeyError: no such user (reported by the caller)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

            def demote() -> None:
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)

            self._run_as = demote
        self._databases = 0

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], capture_output=True,
                                text=True, timeout=120, preexec_fn=self._run_as,
                                cwd=self.root, env={**os.environ, "LC_ALL": "C"})
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                  "-t", "60", "start")

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create(self) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
