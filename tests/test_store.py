"""The store's revisions: every deploy kept, immutable; the split stored; old databases filled in."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from torpor.store import Store


def deploy(store: Store, spec: dict[str, object], now: float, code: str = "c" * 64,
           traffic: dict[str, object] | None = None) -> int:
    record = store.put_function("fn", spec, "/code", "torpor.yaml", now, None, code, "ana@host",
                                traffic)
    return record.revision


class TestRevisions:
    def test_every_deploy_is_a_numbered_immutable_revision(self, tmp_path: Path) -> None:
        """Two deploys: revisions 1 and 2, each with its own spec, code, who and when."""
        store = Store(tmp_path / "t.db")
        assert deploy(store, {"name": "fn", "concurrency": 1}, 10.0, "a" * 64) == 1
        assert deploy(store, {"name": "fn", "concurrency": 2}, 20.0, "b" * 64) == 2
        first, second = store.list_revisions("fn")
        assert (first.number, first.spec["concurrency"], first.code_digest, first.created_at) == (
            1, 1, "a" * 64, 10.0)
        assert (second.number, second.spec["concurrency"], second.code_digest) == (2, 2, "b" * 64)
        assert second.created_by == "ana@host"
        assert store.get_revision("fn", 1) == first
        assert store.get_revision("fn", 3) is None

    def test_the_new_revision_is_named_in_its_traffic(self, tmp_path: Path) -> None:
        """A split written with the deploy names the new revision by its number."""
        store = Store(tmp_path / "t.db")
        deploy(store, {"name": "fn"}, 1.0, traffic={"weights": {"new": 100}, "tags": {}})
        record = store.put_function("fn", {"name": "fn"}, "/code", "torpor.yaml", 2.0, None,
                                    "c" * 64, None,
                                    {"weights": {"1": 90, "new": 10}, "tags": {"canary": "new"}})
        assert record.traffic == {"weights": {"1": 90, "2": 10}, "tags": {"canary": 2}}
        store.put_traffic("fn", {"weights": {"1": 100}, "tags": {}}, 3.0)
        stored = store.get_function("fn")
        assert stored is not None and stored.traffic == {"weights": {"1": 100}, "tags": {}}

    def test_delete_forgets_the_revisions(self, tmp_path: Path) -> None:
        """A deleted function deployed again starts at revision 1."""
        store = Store(tmp_path / "t.db")
        deploy(store, {"name": "fn"}, 1.0)
        deploy(store, {"name": "fn"}, 2.0)
        store.delete_function("fn")
        assert store.list_revisions("fn") == []
        assert deploy(store, {"name": "fn"}, 3.0) == 1

    def test_an_older_database_gets_its_current_revision(self, tmp_path: Path) -> None:
        """A database written before revisions were kept: the column is added and each function's
        current revision is recorded."""
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE functions (name VARCHAR(63) PRIMARY KEY, revision INTEGER "
                         "NOT NULL, spec_json TEXT NOT NULL, base_dir TEXT NOT NULL, source TEXT "
                         "NOT NULL, model_digest VARCHAR(64), code_digest VARCHAR(64), created_at "
                         "FLOAT NOT NULL, updated_at FLOAT NOT NULL)")
            conn.execute("INSERT INTO functions VALUES ('old', 7, '{\"name\": \"old\"}', '/x', "
                          "'torpor.yaml', NULL, 'd', 1.0, 5.0)")
        store = Store(path)
        (revision,) = store.list_revisions("old")
        assert (revision.number, revision.spec, revision.code_digest, revision.created_at) == (
            7, {"name": "old"}, "d", 5.0)
        record = store.get_function("old")
        assert record is not None and record.traffic is None


def _info(instance_id: str) -> dict[str, object]:
    return {"instance_id": instance_id, "function": "fn", "revision": 1, "pool": "local",
            "node": "local", "device": "cpu", "gpu_memory_mb": 0, "cpus": 1.0, "memory_mb": 512}


class TestCrashRecovery:
    def test_last_alive_is_the_later_of_heartbeat_and_last_ledger_write(self, tmp_path: Path) -> None:
        """A server SIGKILLed 0.5 s after its last heartbeat had opened an interval at 100.5: what
        it left open closes at 100.5, so no interval ends before it begins (a bill over such a row
        was a 500) and the instance's intervals still meet end to start."""
        store = Store(tmp_path / "t.db")
        assert store.last_alive() is None  # a fresh store: the caller uses its clock
        store.ledger_transition(_info("a"), "starting", 99.0)
        store.ledger_transition(_info("b"), "starting", 99.5)
        store.heartbeat(100.0)
        store.ledger_transition(_info("a"), "ready", 100.5)  # after the last heartbeat
        assert store.last_alive() == 100.5
        assert store.close_open_intervals(store.last_alive()) == 2
        rows = [(r["instance_id"], r["state"], r["start"], r["end"])
                for r in store.ledger_rows(0.0, 200.0)]
        assert rows == [("a", "starting", 99.0, 100.5), ("b", "starting", 99.5, 100.5),
                        ("a", "ready", 100.5, 100.5)]

    def test_heartbeat_after_the_last_write_wins(self, tmp_path: Path) -> None:
        store = Store(tmp_path / "t.db")
        store.ledger_transition(_info("a"), "starting", 99.0)
        store.ledger_transition(_info("a"), None, 99.2)
        store.heartbeat(101.0)
        assert store.last_alive() == 101.0
