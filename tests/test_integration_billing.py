"""The ledger and bills on real processes: every state interval recorded, nothing lost on a crash."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, make_function

pytestmark = pytest.mark.timeout(90)


def ledger(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "torpor.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM ledger ORDER BY id")]


def heartbeat(data_dir: Path) -> float:
    with sqlite3.connect(data_dir / "torpor.db") as db:
        return float(db.execute("SELECT value FROM server_state WHERE key='heartbeat'").fetchone()[0])


def contiguous(rows: list[dict[str, Any]]) -> None:
    """Each instance's intervals follow one another exactly: no gap, no overlap, all closed."""
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_instance.setdefault(row["instance_id"], []).append(row)
    for intervals in by_instance.values():
        intervals.sort(key=lambda r: r["start"])
        for before, after in itertools.pairwise(intervals):
            assert before["end"] == after["start"], (before, after)
        assert all(r["end"] is not None and r["end"] >= r["start"] for r in intervals)


class TestLedger:
    def test_states_recorded_and_closed_on_clean_stop(self, make_server: Any, tmp_path: Path) -> None:
        """starting → ready → frozen → ready → … all recorded; a clean stop closes every interval."""
        srv = make_server([make_function(tmp_path, "sleepy")])
        srv.wait_for(lambda: srv.instances("sleepy") and srv.instances("sleepy")[0]["state"] == "frozen",
                     what="frozen")
        assert srv.invoke("sleepy", {}).headers["x-torpor-start"] == "thawed"
        assert srv.stop() == 0
        rows = ledger(srv.data_dir)
        assert [r["state"] for r in rows][:4] == ["starting", "ready", "frozen", "ready"]
        contiguous(rows)

    def test_sigkill_closes_at_last_heartbeat(self, make_server: Any) -> None:
        """After a SIGKILL the next start closes open intervals at the last heartbeat: no gap,
        no overlap, nothing past the moment the server was last known alive."""
        srv = make_server([EXAMPLES / "echo"])
        assert srv.invoke("echo", {}).status_code == 200
        time.sleep(1.5)  # at least one heartbeat after the instance is ready
        killed_at = time.time()
        srv.stop(signal.SIGKILL)
        last_alive = heartbeat(srv.data_dir)
        assert killed_at - 1.5 < last_alive <= killed_at
        open_rows = [r for r in ledger(srv.data_dir) if r["end"] is None]
        assert open_rows  # the crash left them open

        again = make_server(data_dir=srv.data_dir)
        rows = [r for r in ledger(srv.data_dir) if r["instance_id"] == open_rows[0]["instance_id"]]
        assert rows[-1]["end"] == last_alive
        contiguous(rows)
        bill = again.http.get("/api/v1/billing", params={"function": "echo"}).json()
        (line,) = bill["functions"]
        first = min(r["start"] for r in rows)
        # every recorded second of the dead server's instance is billed, once
        billed = Decimal(line["active_seconds"])
        assert billed >= Decimal(str(round(last_alive - first, 6))) - Decimal("0.001")


class TestBill:
    def test_cost_follows_the_configured_prices(self, make_server: Any, tmp_path: Path) -> None:
        """cost = active vCPU-s × active price + idle vCPU-s × idle price (memory free here)."""
        data_dir = tmp_path / "data0"
        data_dir.mkdir(parents=True)
        (data_dir / "config.yaml").write_text(
            "prices:\n  cpu_per_vcpu_s: 1\n  cpu_idle_per_vcpu_s: 0.1\n  memory_per_gb_s: 0\n"
            "  memory_idle_per_gb_s: 0\n  always_on_gpu_per_hour: 3600\n")
        srv = make_server([make_function(tmp_path, "sleepy")], data_dir=data_dir)
        srv.wait_for(lambda: srv.instances("sleepy") and srv.instances("sleepy")[0]["state"] == "frozen",
                     what="frozen")
        time.sleep(0.5)
        until = time.time()
        bill = srv.http.get("/api/v1/billing", params={"until": until}).json()
        (line,) = bill["functions"]
        active, idle = Decimal(line["active_seconds"]), Decimal(line["idle_seconds"])
        assert idle > 0 and active > 0
        assert Decimal(line["cost"]) == active * 1 + idle * Decimal("0.1")  # 1 vCPU
        assert line["state_seconds"].keys() >= {"starting", "ready", "frozen"}
        span = Decimal(str(until)) - Decimal(str(bill["since_epoch_s"]))
        # a CPU function is compared with one always-on instance of its shape at the active price
        assert Decimal(line["always_on_cost"]) == pytest.approx(span * 1, abs=Decimal("0.01"))

    def test_bad_arguments(self, make_server: Any) -> None:
        """A bad time is a 400 naming the argument; an unknown function a 404."""
        srv = make_server()
        bad = srv.http.get("/api/v1/billing", params={"since": "yesterday"})
        assert bad.status_code == 400
        assert bad.json()["error"] == "since: 'yesterday' is neither epoch seconds nor an ISO 8601 time"
        assert srv.http.get("/api/v1/billing", params={"function": "ghost"}).status_code == 404
        empty = srv.http.get("/api/v1/billing").json()
        assert (empty["functions"], empty["cost"]) == ([], "0")

    def test_bad_price_config_stops_the_server(self, tmp_path: Path) -> None:
        """A config with a misspelt price refuses to start, naming file and field."""
        from tests.conftest import free_port, torpor_cli

        config = tmp_path / "server.yaml"
        config.write_text("prices:\n  gpu_idle: 1\n")
        result = torpor_cli("serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"),
                            "--config", str(config))
        assert result.returncode == 1
        assert f"{config}: prices.gpu_idle: unknown field" in result.stderr.replace("\n", "")
