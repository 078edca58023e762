"""A second ``torpor serve`` on another machine takes over a PostgreSQL store after the first one's
machine is lost: every function, revision and ledger row, and the code and models to run them.

Server A (data dir A) deploys two functions, one with two revisions and one with a cached model,
serves requests, and is SIGKILLed together with every process it started; data dir A is deleted.
Server B, with a fresh data dir and the same ``--store``, lists the functions, revisions and ledger,
closes what A left open at A's last sign of life (its last heartbeat or a later ledger write), and
serves both functions, bringing their code and model back from the store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TorporServer, free_port, make_function
from sqlalchemy import create_engine, select

from torpor.store import tables
from torpor.store.store import store_url

# Columns a later server may change in a row the lost one wrote: the heartbeat it overwrites, the
# state of an instance record it closes. A None the lost server left may be filled in (an interval's
# end, an instance's exit); every other value must come through as it was.
MAY_CHANGE = {("server_state", "value"), ("instances", "state")}


def snapshot(url: str) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    """Every table of the schema, its rows by primary key."""
    engine = create_engine(store_url(url))
    try:
        with engine.connect() as conn:
            return {table.name: {tuple(row._mapping[c.name] for c in table.primary_key.columns):
                                 dict(row._mapping) for row in conn.execute(select(table))}
                    for table in tables.metadata.sorted_tables}
    finally:
        engine.dispose()


def descendants(pid: int) -> list[int]:
    """Every process started by ``pid``, at any depth."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def lose_machine(server: TorporServer) -> None:
    """SIGKILL the server and everything it started, at once, then delete its data directory."""
    pids = [server.process.pid, *descendants(server.process.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.process.wait(10)
    server.http.close()
    shutil.rmtree(server.data_dir)


def test_a_server_on_another_machine_takes_over_the_store(tmp_path: Path, postgres_url: str) -> None:
    echo = make_function(tmp_path, "echo")
    modelfile = make_function(tmp_path, "modelfile")
    a = TorporServer(tmp_path / "a" / "data", extra_args=["--store", postgres_url])
    try:
        assert a.deploy(echo)["revision"] == 1
        assert a.invoke("echo", {"n": 1}).json()["echo"] == {"n": 1}
        (echo / "model.py").write_text((echo / "model.py").read_text().replace(
            '"calls": self.calls}', '"calls": self.calls, "revision": 2}'))
        assert a.deploy(echo)["revision"] == 2
        tagged = a.http.put("/api/v1/functions/echo/tags/first", json={"revision": 1})
        assert tagged.status_code == 200, tagged.text
        assert a.deploy(modelfile)["revision"] == 1
        assert a.invoke("echo", {"n": 2}).json()["revision"] == 2
        assert "revision" not in a.http.post("/fn/echo@first/invoke", json={"n": 3}).json()
        assert a.invoke("modelfile").json()["vocab"] == ["alpha", "beta", "gamma"]
        a.wait_for(lambda: all(i["state"] in ("ready", "busy", "frozen") for i in a.instances())
                   and len(a.instances()) == 3, what="three instances ready")
    finally:
        lose_machine(a)
    written = snapshot(postgres_url)
    assert not (tmp_path / "a" / "data").exists()
    open_intervals = [r for r in written["ledger"].values() if r["end"] is None]
    assert {r["function"] for r in open_intervals} == {"echo", "modelfile"}
    # the last sign of life: A's last heartbeat or a later ledger write
    last_alive = max([written["server_state"][("heartbeat",)]["value"],
                      *(r["start"] for r in written["ledger"].values()),
                      *(r["end"] for r in written["ledger"].values() if r["end"] is not None)])
    assert {(kind, len(digest)) for kind, digest, _ in written["blobs"]} == {("code", 64), ("model", 64)}
    assert len({digest for kind, digest, _ in written["blobs"] if kind == "code"}) == 3

    b = TorporServer(tmp_path / "b" / "data", extra_args=["--store", postgres_url])
    try:
        # A's keys are in the store: B makes no admin key of its own and takes A's
        assert not b.api_key and not (tmp_path / "b" / "data" / "admin.key").exists()
        assert b.http.get("/api/v1/functions").status_code == 401
        b.http.headers["authorization"] = f"Bearer {a.api_key}"
        functions = {f["name"]: f for f in b.http.get("/api/v1/functions").json()}
        assert {name: f["revision"] for name, f in functions.items()} == {"echo": 2, "modelfile": 1}
        revisions = b.http.get("/api/v1/functions/echo/revisions").json()
        assert [(r["revision"], r["tags"]) for r in revisions] == [(1, ["first"]), (2, [])]
        modelfile_revisions = b.http.get("/api/v1/functions/modelfile/revisions").json()
        assert [r["revision"] for r in modelfile_revisions] == [1]
        # B runs both revisions of echo and the model, from files it never had
        answer = b.invoke("echo", {"n": 4}).json()
        assert (answer["echo"], answer["calls"], answer["revision"]) == ({"n": 4}, 1, 2)
        assert answer["instance"].startswith("echo-2-")
        assert "revision" not in b.http.post("/fn/echo@first/invoke", json={"n": 5}).json()
        body = b.invoke("modelfile").json()
        assert body["vocab"] == ["alpha", "beta", "gamma"]
        assert body["root"].startswith(str(tmp_path / "b" / "data"))
        bill = b.http.get("/api/v1/billing").json()
        assert {line["function"] for line in bill["functions"]} == {"echo", "modelfile"}
        taken_over = snapshot(postgres_url)
    finally:
        assert b.stop() == 0
    # every row A wrote is still there, as A wrote it; what A left open ends at its last heartbeat
    for name, rows in written.items():
        for key, row in rows.items():
            assert key in taken_over[name], f"{name} lost the row {key}"
            for column, value in row.items():
                if value is not None and (name, column) not in MAY_CHANGE:
                    assert taken_over[name][key][column] == value, (name, key, column)
    for row in open_intervals:
        assert taken_over["ledger"][(row["id"],)]["end"] == last_alive
    for key, row in written["instances"].items():
        if row["exited_at"] is None:
            closed = taken_over["instances"][key]
            assert (closed["state"], closed["exited_at"]) == ("stopped", last_alive)


def test_serve_refuses_a_database_it_cannot_reach(tmp_path: Path) -> None:
    """An unreachable --store: one sentence naming --store and the URL without its password, and no
    server."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://ana:hunter2@127.0.0.1:{port}/torpor"
    result = subprocess.run([sys.executable, "-m", "torpor", "serve", "--port", str(free_port()),
                             "--data-dir", str(tmp_path / "data"), "--store", url],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert f"--store postgresql://ana:***@127.0.0.1:{port}/torpor: cannot open the database: " \
        in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "serving on" not in result.stderr


def test_serve_refuses_a_malformed_store_url_before_anything(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "torpor", "serve", "--port", str(free_port()),
                             "--data-dir", str(tmp_path / "data"),
                             "--store", "mysql://ana:hunter2@db/torpor"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (result.returncode, result.stderr) == (1, (
        "error: --store: 'mysql://ana:***@db/torpor' is not a PostgreSQL URL "
        "(postgresql://USER@HOST[:PORT]/DATABASE); without --store torpor keeps its store in "
        "DATA_DIR/torpor.db\n"))
    assert not (tmp_path / "data").exists()


def test_serve_refuses_a_store_another_server_uses(tmp_path: Path, postgres_url: str) -> None:
    a = TorporServer(tmp_path / "a" / "data", extra_args=["--store", postgres_url])
    try:
        result = subprocess.run([sys.executable, "-m", "torpor", "serve", "--port", str(free_port()),
                                 "--data-dir", str(tmp_path / "b"), "--store", postgres_url],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert result.returncode == 1
        assert f"--store {postgres_url}: another torpor serve (torpor serve pid " \
               f"{a.process.pid} on " in result.stderr
        assert a.http.get("/healthz").status_code == 200
    finally:
        assert a.stop() == 0


pytestmark = pytest.mark.timeout(180)


def test_the_config_names_the_store(tmp_path: Path, postgres_url: str) -> None:
    """``store:`` in the server config opens that database; a bad one is named with the file."""
    from torpor.platform import Platform
    from torpor.store.store import StoreError

    config = tmp_path / "config.yaml"
    config.write_text(f"gpus: []\nstore: {postgres_url}\n", encoding="utf-8")
    platform = Platform(tmp_path / "data", config_path=config)
    try:
        assert platform.store.shared and platform.store.describe() == postgres_url
        assert not (tmp_path / "data" / "torpor.db").exists()
    finally:
        platform.store.close()
    config.write_text("gpus: []\nstore: mysql://ana:pw@db/torpor\n", encoding="utf-8")
    with pytest.raises(StoreError) as caught:
        Platform(tmp_path / "data", config_path=config)
    assert str(caught.value) == (
        f"store in {config}: 'mysql://ana:***@db/torpor' is not a PostgreSQL URL "
        "(postgresql://USER@HOST[:PORT]/DATABASE); without --store torpor keeps its store in "
        "DATA_DIR/torpor.db")
