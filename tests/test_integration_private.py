"""The data directory is private and keeps no dead sockets (issue 16 #15), on a real server."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from conftest import FUNCTIONS

from torpor.backends.local import socket_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_and_no_dead_sockets(make_server: Any, tmp_path: Path) -> None:
    """0700 directories, 0600 files (also ones an older server left 0644); sockets of a crashed
    instance and of a previous server are removed."""
    data_dir = tmp_path / "data"
    (data_dir / "logs").mkdir(parents=True)
    old_log = data_dir / "logs" / "old.log"
    old_log.write_text("from an older torpor\n")
    old_log.chmod(0o644)
    run_dir = socket_dir(data_dir.resolve())
    stale = run_dir / "gone-1-abc.sock"
    stale.write_text("")

    srv = make_server([FUNCTIONS / "crashy"], data_dir=data_dir)
    assert not stale.exists()
    ok = srv.invoke("crashy", {"crash": False})
    dead = ok.headers["x-torpor-instance"]
    assert (run_dir / f"{dead}.sock").exists()
    assert srv.invoke("crashy", {"crash": True}).status_code == 502
    srv.wait_for(lambda: not (run_dir / f"{dead}.sock").exists(), what="the dead socket removed")

    assert mode(data_dir) == 0o700
    assert mode(run_dir) == 0o700
    assert mode(old_log) == 0o600
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".stderr.log") for p in files)
    assert {str(p.relative_to(data_dir)): mode(p) for p in files if mode(p) & 0o077} == {}
    dirs = [p for p in data_dir.rglob("*") if p.is_dir()]
    assert {str(p.relative_to(data_dir)): mode(p) for p in dirs if mode(p) & 0o077} == {}
    assert srv.stop() == 0
    assert list(run_dir.glob("*.sock")) == []
