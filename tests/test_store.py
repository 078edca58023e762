"""The store: every deploy kept as an immutable revision, the split stored, old databases filled
in; instances, the ledger and the heartbeat; blobs; on SQLite and on a real PostgreSQL server alike
(``store_target``), and what ``--store`` says when the database is wrong or taken."""

from __future__ import annotations

import io
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from torpor.store import Store, blobs
from torpor.store.store import StoreError, store_url


@pytest.fixture
def store(store_target: Path | str) -> Iterator[Store]:
    store = Store(store_target)
    yield store
    store.close()


def deploy(store: Store, spec: dict[str, object], now: float, code: str = "c" * 64,
           traffic: dict[str, object] | None = None) -> int:
    record = store.put_function("fn", spec, "/code", "torpor.yaml", now, None, code, "ana@host",
                                traffic)
    return record.revision


class TestRevisions:
    def test_every_deploy_is_a_numbered_immutable_revision(self, store: Store) -> None:
        """Two deploys: revisions 1 and 2, each with its own spec, code, who and when."""
        assert deploy(store, {"name": "fn", "concurrency": 1}, 10.0, "a" * 64) == 1
        assert deploy(store, {"name": "fn", "concurrency": 2}, 20.0, "b" * 64) == 2
        first, second = store.list_revisions("fn")
        assert (first.number, first.spec["concurrency"], first.code_digest, first.created_at) == (
            1, 1, "a" * 64, 10.0)
        assert (second.number, second.spec["concurrency"], second.code_digest) == (2, 2, "b" * 64)
        assert second.created_by == "ana@host"
        assert store.get_revision("fn", 1) == first
        assert store.get_revision("fn", 3) is None

    def test_the_new_revision_is_named_in_its_traffic(self, store: Store) -> None:
        """A split written with the deploy names the new revision by its number."""
        deploy(store, {"name": "fn"}, 1.0, traffic={"weights": {"new": 100}, "tags": {}})
        record = store.put_function("fn", {"name": "fn"}, "/code", "torpor.yaml", 2.0, None,
                                    "c" * 64, None,
                                    {"weights": {"1": 90, "new": 10}, "tags": {"canary": "new"}})
        assert record.traffic == {"weights": {"1": 90, "2": 10}, "tags": {"canary": 2}}
        store.put_traffic("fn", {"weights": {"1": 100}, "tags": {}}, 3.0)
        stored = store.get_function("fn")
        assert stored is not None and stored.traffic == {"weights": {"1": 100}, "tags": {}}

    def test_who_deployed_is_kept_whatever_its_length(self, store: Store) -> None:
        """The client names who deploys; 300 characters are kept whole on both databases."""
        who = "ana@" + "h" * 296
        store.put_function("fn", {"name": "fn"}, "/code", "torpor.yaml", 1.0, None, "c" * 64, who)
        assert store.list_revisions("fn")[0].created_by == who

    def test_delete_forgets_the_revisions(self, store: Store) -> None:
        """A deleted function deployed again starts at revision 1."""
        deploy(store, {"name": "fn"}, 1.0)
        deploy(store, {"name": "fn"}, 2.0)
        store.delete_function("fn")
        assert store.list_revisions("fn") == []
        assert deploy(store, {"name": "fn"}, 3.0) == 1

    def test_an_older_database_gets_its_current_revision(self, store_target: Path | str) -> None:
        """A database written before revisions were kept: the column is added and each function's
        current revision is recorded."""
        url = (f"sqlite:///{store_target}" if isinstance(store_target, Path)
               else store_url(store_target))
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE functions (name VARCHAR(63) PRIMARY KEY, revision "
                              "INTEGER NOT NULL, spec_json TEXT NOT NULL, base_dir TEXT NOT NULL, "
                              "source TEXT NOT NULL, model_digest VARCHAR(64), code_digest "
                              "VARCHAR(64), created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL)"))
            conn.execute(text("INSERT INTO functions VALUES ('old', 7, '{\"name\": \"old\"}', "
                              "'/x', 'torpor.yaml', NULL, 'd', 1.0, 5.0)"))
        engine.dispose()
        store = Store(store_target)
        (revision,) = store.list_revisions("old")
        assert (revision.number, revision.spec, revision.code_digest, revision.created_at) == (
            7, {"name": "old"}, "d", 5.0)
        record = store.get_function("old")
        assert record is not None and record.traffic is None
        store.close()


INFO: dict[str, Any] = {"instance_id": "fn-1-abc", "function": "fn", "revision": 1, "pool": "default",
                        "node": "local", "device": "cpu", "gpu_memory_mb": 0, "cpus": 1.0,
                        "memory_mb": 512}


class TestLedgerAndInstances:
    def test_a_transition_closes_one_interval_and_opens_the_next(self, store: Store) -> None:
        """starting at 10, ready at 12.5, ended at 20: two closed intervals, in order."""
        store.ledger_transition(INFO, "starting", 10.0)
        store.ledger_transition(INFO, "ready", 12.5)
        store.ledger_transition(INFO, None, 20.0)
        rows = store.ledger_rows(0.0, float("inf"))
        assert [(r["state"], r["start"], r["end"]) for r in rows] == [
            ("starting", 10.0, 12.5), ("ready", 12.5, 20.0)]
        assert store.ledger_rows(12.5, 15.0, "fn")[0]["state"] == "ready"
        assert store.ledger_rows(0.0, 100.0, "other") == []

    def test_what_a_dead_server_left_open_ends_at_its_heartbeat(self, store: Store) -> None:
        """An open interval and a live instance record are closed at the last heartbeat."""
        store.ledger_transition(INFO, "ready", 100.0)
        store.save_instance({"id": "fn-1-abc", "function": "fn", "revision": 1, "state": "ready",
                             "started_at": 99.0, "ready_at": 100.0})
        store.save_instance({"id": "fn-1-abc", "function": "fn", "revision": 1, "state": "busy",
                             "started_at": 99.0, "ready_at": 100.0})
        store.heartbeat(130.0)
        store.heartbeat(160.25)
        assert store.last_heartbeat() == 160.25
        assert store.close_open_instances(160.25) == 1
        assert store.close_open_intervals(160.25) == 1
        (row,) = store.ledger_rows(0.0, float("inf"))
        assert (row["start"], row["end"]) == (100.0, 160.25)
        (instance,) = store.list_instances("fn")
        assert (instance["state"], instance["exited_at"], instance["failure"]) == (
            "stopped", 160.25, "server stopped")

    def test_a_transition_after_the_last_heartbeat_is_a_later_sign_of_life(
            self, store: Store) -> None:
        """Heartbeat at 160, then a second instance starts at 160.7 and the server dies: both open
        intervals end at 160.7, none before it starts."""
        assert store.last_alive() is None
        store.ledger_transition(INFO, "ready", 100.0)
        store.heartbeat(160.0)
        store.ledger_transition({**INFO, "instance_id": "fn-1-def"}, "starting", 160.7)
        assert store.last_alive() == 160.7
        assert store.close_open_intervals(160.7) == 2
        assert [(r["start"], r["end"]) for r in store.ledger_rows(0.0, float("inf"))] == [
            (100.0, 160.7), (160.7, 160.7)]

    def test_events_and_provisioning(self, store: Store) -> None:
        store.add_event("fn", 1.0, "deployed", "revision 1")
        store.add_event("fn", 2.0, "traffic", "1=100")
        assert [e["kind"] for e in store.list_events("fn")] == ["traffic", "deployed"]
        store.put_provision("fn", {"target": 2}, 3.0)
        store.put_provision("fn", {"target": 3}, 4.0)
        assert store.get_provision("fn") == {"target": 3}


class TestBlobs:
    def test_a_blob_comes_back_whole_from_its_parts(self, store: Store,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """10 bytes in 4-byte parts: three parts, the same bytes back; a second put is a no-op."""
        monkeypatch.setattr(blobs, "PART_BYTES", 4)
        assert blobs.put(store, "code", "d" * 64, io.BytesIO(b"0123456789")) is True
        assert blobs.put(store, "code", "d" * 64, io.BytesIO(b"other")) is False
        out = io.BytesIO()
        assert blobs.read(store, "code", "d" * 64, out) == 10
        assert out.getvalue() == b"0123456789"
        assert blobs.has(store, "code", "d" * 64) and not blobs.has(store, "model", "d" * 64)
        assert blobs.read(store, "model", "d" * 64, io.BytesIO()) is None

    def test_an_empty_blob_and_one_of_exactly_one_part(self, store: Store,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(blobs, "PART_BYTES", 4)
        blobs.put(store, "code", "e" * 64, io.BytesIO(b""))
        blobs.put(store, "model", "f" * 64, io.BytesIO(b"abcd"))
        empty, four = io.BytesIO(), io.BytesIO()
        assert blobs.read(store, "code", "e" * 64, empty) == 0 and empty.getvalue() == b""
        assert blobs.read(store, "model", "f" * 64, four) == 4 and four.getvalue() == b"abcd"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


class TestStoreUrl:
    @pytest.mark.parametrize(("url", "message"), [
        ("mysql://ana:secret@db/torpor", "--store: 'mysql://ana:***@db/torpor' is not a PostgreSQL "
         "URL (postgresql://USER@HOST[:PORT]/DATABASE); without --store torpor keeps its store in "
         "DATA_DIR/torpor.db"),
        ("postgresql://ana:secret@db", "--store: 'postgresql://ana:***@db' names no database; give "
         "postgresql://USER@HOST[:PORT]/DATABASE"),
        ("db.internal/torpor", "--store: 'db.internal/torpor' is not a database URL; give "
         "postgresql://USER@HOST[:PORT]/DATABASE"),
    ])
    def test_a_bad_url_is_named_without_its_password(self, url: str, message: str) -> None:
        with pytest.raises(StoreError) as caught:
            Store(url)
        assert str(caught.value) == message

    def test_without_psycopg_the_error_says_what_to_install(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A plain ``pip install torpor`` has no PostgreSQL driver: the error names the extra."""
        monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg fails, as if missing
        with pytest.raises(StoreError) as caught:
            Store("postgresql://ana:pw@127.0.0.1:5/torpor")
        assert str(caught.value) == ("--store postgresql://ana:***@127.0.0.1:5/torpor: PostgreSQL "
                                     "needs psycopg; pip install 'torpor[postgres]'")

    def test_postgresql_urls_use_psycopg_3(self) -> None:
        for url in ("postgresql://ana@db/t", "postgres://ana@db/t", "postgresql+psycopg://ana@db/t"):
            assert store_url(url).drivername == "postgresql+psycopg"

    def test_an_unreachable_database_is_one_sentence_naming_store(self) -> None:
        port = closed_port()
        with pytest.raises(StoreError) as caught:
            Store(f"postgresql://ana:hunter2@127.0.0.1:{port}/torpor")
        message = str(caught.value)
        assert message.startswith(f"--store postgresql://ana:***@127.0.0.1:{port}/torpor: cannot "
                                  "open the database: ")
        assert "Connection refused" in message and "hunter2" not in message
        assert "\n" not in message


class TestServeLock:
    def test_a_second_server_cannot_take_a_store_in_use(self, postgres_url: str) -> None:
        """While server A holds the store, B is refused, naming A; once A closes, B takes it."""
        first = Store(postgres_url, holder="torpor serve pid 1 on a")
        with pytest.raises(StoreError) as caught:
            Store(postgres_url, holder="torpor serve pid 2 on b")
        assert str(caught.value) == (
            f"--store {postgres_url}: another torpor serve (torpor serve pid 1 on a from "
            "127.0.0.1) is using this database; two servers on one store at once are not "
            "supported (if its machine is lost, PostgreSQL lets go within about 25 s)")
        first.close()
        second = Store(postgres_url, holder="torpor serve pid 2 on b")
        assert second.list_functions() == []
        second.close()

    def test_a_lock_lost_with_its_session_is_taken_again(self, postgres_url: str) -> None:
        """The database ends the session holding the lock (as a restart does): the next heartbeat
        takes it again, and a second server is still refused."""
        first = Store(postgres_url, holder="torpor serve pid 1 on a")
        assert first.keep_lock() is True
        admin = create_engine(store_url(postgres_url))
        with admin.begin() as conn:
            ended = conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                "'torpor serve pid 1 on a'")).scalars().all()
        assert ended == [True]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until the ended session is gone, and its lock with it
            with admin.connect() as conn:
                if not conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = "
                                         "'advisory'")).scalar_one():
                    break
            time.sleep(0.02)
        admin.dispose()
        first.heartbeat(5.0)
        assert first.last_heartbeat() == 5.0
        with pytest.raises(StoreError, match=re.escape("(torpor serve pid 1 on a from 127.0.0.1)")):
            Store(postgres_url, holder="torpor serve pid 2 on b")
        first.close()

    def test_a_holder_whose_heartbeat_stopped_is_waited_for(self, postgres_url: str) -> None:
        """The holder wrote its last heartbeat a minute ago (its machine is gone, its connection
        not yet): the new server waits until PostgreSQL lets go of the lock, then starts."""
        import threading

        lost = Store(postgres_url, holder="torpor serve pid 1 on lost")
        lost.heartbeat(time.time() - 60)
        started = time.monotonic()
        threading.Timer(1.5, lost.close).start()  # PostgreSQL ends the dead session 1.5 s later
        taker = Store(postgres_url, holder="torpor serve pid 2 on b")
        waited = time.monotonic() - started
        assert 1.5 <= waited < 10
        assert taker.keep_lock() is True
        taker.close()


class TestCrashRecovery:
    def test_a_heartbeat_after_the_last_ledger_write_is_the_last_sign_of_life(
            self, store: Store) -> None:
        store.ledger_transition(INFO, "starting", 99.0)
        store.ledger_transition(INFO, None, 99.2)
        store.heartbeat(101.0)
        assert store.last_alive() == 101.0
