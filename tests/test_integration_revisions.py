"""Revisions on real processes: a weighted split, tags, rollback under load, scale to zero at 0 %."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TorporServer, make_function, process_alive, torpor_cli

pytestmark = pytest.mark.timeout(120)


def two_revisions(srv: TorporServer, tmp_path: Path, name: str, **overrides: Any) -> Path:
    """Deploy the `slow` test function twice as ``name``: revisions 1 and 2 (2 takes all)."""
    folder = make_function(tmp_path, "slow", name=name, **overrides)
    assert srv.deploy(folder)["revision"] == 1
    assert srv.deploy(folder)["revision"] == 2
    return folder


def revisions(srv: TorporServer, name: str) -> dict[int, dict[str, Any]]:
    rows = srv.http.get(f"/api/v1/functions/{name}/revisions").json()
    return {row["revision"]: row for row in rows}


class TestSplit:
    def test_1000_requests_follow_an_80_20_split(self, make_server: Any, tmp_path: Path) -> None:
        """1,000 requests over 1=80 2=20 land within ±5 % of it, counted by x-torpor-revision."""
        srv = make_server()
        two_revisions(srv, tmp_path, "split")
        put = srv.http.put("/api/v1/functions/split/traffic", json={"weights": {"1": 80, "2": 20}})
        assert put.status_code == 200, put.text
        assert put.json()["weights"] == {"1": 80, "2": 20}

        def send(client: httpx.Client, n: int) -> list[tuple[int, str]]:
            out = []
            for _ in range(n):
                r = client.post("/fn/split/invoke", json={})
                out.append((r.status_code, r.headers.get("x-torpor-revision", "")))
            return out

        clients = [httpx.Client(base_url=srv.url, timeout=30) for _ in range(4)]
        try:
            with ThreadPoolExecutor(4) as pool:
                results = [x for part in pool.map(send, clients, [250] * 4) for x in part]
        finally:
            for client in clients:
                client.close()
        assert Counter(status for status, _ in results) == {200: 1000}
        by_revision = Counter(revision for _, revision in results)
        assert set(by_revision) == {"1", "2"}
        assert 750 <= by_revision["1"] <= 850, by_revision
        listed = revisions(srv, "split")
        assert (listed[1]["percent"], listed[2]["percent"]) == (80, 20)
        assert listed[1]["requests"] + listed[2]["requests"] == 1000

    def test_tag_reaches_only_its_revision(self, make_server: Any, tmp_path: Path) -> None:
        """`/fn/NAME@stable/` reaches revision 1 only, while untagged traffic goes to 2."""
        srv = make_server()
        two_revisions(srv, tmp_path, "tagged")
        put = srv.http.put("/api/v1/functions/tagged/tags/stable", json={"revision": 1})
        assert put.json()["tags"] == {"stable": 1}
        tagged = [srv.http.post("/fn/tagged@stable/invoke", json={}) for _ in range(20)]
        assert {(r.status_code, r.headers["x-torpor-revision"], r.json()["revision"])
                for r in tagged} == {(200, "1", 1)}
        plain = srv.invoke("tagged", {})
        assert plain.headers["x-torpor-revision"] == "2"
        missing = srv.http.post("/fn/tagged@nope/invoke", json={})
        assert missing.status_code == 404
        assert missing.json()["error"] == "function 'tagged' has no revision tagged 'nope'"

    def test_bad_weights_are_rejected_naming_the_field(self, make_server: Any,
                                                       tmp_path: Path) -> None:
        """Weights not summing to 100, or naming an unknown revision: 400 naming the field."""
        srv = make_server()
        two_revisions(srv, tmp_path, "weights")
        path = "/api/v1/functions/weights/traffic"
        short = srv.http.put(path, json={"weights": {"1": 90}})
        assert (short.status_code, short.json()["error"]) == (
            400, "traffic: the weights must sum to 100, not 90")
        unknown = srv.http.put(path, json={"weights": {"1": 50, "7": 50}})
        assert unknown.json()["error"] == "traffic.7: the function has no revision 7"
        assert srv.http.get(path).json()["weights"] == {"2": 100}  # unchanged


class TestRollback:
    def test_rollback_under_load_loses_no_request(self, make_server: Any, tmp_path: Path) -> None:
        """Requests keep flowing through a rollback: all answered 200; then only revision 1
        serves, and revision 2 (0 %, untagged) scales to zero and its template is retired."""
        srv = make_server()
        two_revisions(srv, tmp_path, "roll", scaling={"scale_to_zero_grace_s": 30})
        assert srv.invoke("roll", {})  # revision 2 warm
        template_2 = revisions(srv, "roll")[2]["template"]
        assert template_2 is not None and template_2["revision"] == 2
        stop = threading.Event()
        results: list[tuple[int, str]] = []

        def load() -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as client:
                while not stop.is_set():
                    r = client.post("/fn/roll/invoke", json={"sleep_s": 0.05})
                    results.append((r.status_code, r.headers.get("x-torpor-revision", "")))

        with ThreadPoolExecutor(3) as pool:
            for _ in range(3):
                pool.submit(load)
            srv.wait_for(lambda: len(results) >= 20, what="load on revision 2")
            rolled = srv.http.post("/api/v1/functions/roll/rollback", json={})
            assert rolled.json()["weights"] == {"1": 100}
            srv.wait_for(lambda: results[-1][1] == "1", what="traffic on revision 1")
            settled = len(results)
            srv.wait_for(lambda: len(results) >= settled + 20, what="load on revision 1")
            stop.set()
        assert {status for status, _ in results} == {200}, Counter(results)
        assert {revision for _, revision in results} == {"1", "2"}
        srv.wait_for(lambda: {i["revision"] for i in srv.instances("roll")} == {1},
                     what="revision 2 scaled to zero")
        srv.wait_for(lambda: revisions(srv, "roll")[2]["template"] is None,
                     what="revision 2's template retired")
        if template_2["pid"] is not None:
            srv.wait_for(lambda: not process_alive(template_2["pid"]), what="template stopped")
        events = [e["message"] for e in srv.function("roll")["events"]]
        assert "rolled back to revision 1: 1=100" in events

    def test_revisions_and_split_survive_a_restart(self, make_server: Any, tmp_path: Path) -> None:
        """Revisions are immutable records; the split and tags come back with the server."""
        data_dir = tmp_path / "data"
        srv = make_server(data_dir=data_dir)
        two_revisions(srv, tmp_path, "kept")
        srv.http.put("/api/v1/functions/kept/traffic", json={"weights": {"1": 50, "2": 50}})
        srv.http.put("/api/v1/functions/kept/tags/canary", json={"revision": 2})
        srv.stop()
        again = make_server(data_dir=data_dir)
        assert again.http.get("/api/v1/functions/kept/traffic").json() == {
            "function": "kept", "latest": 2, "weights": {"1": 50, "2": 50}, "tags": {"canary": 2}}
        seen = {again.invoke("kept", {}).headers["x-torpor-revision"] for _ in range(4)}
        assert seen == {"1", "2"}
        listed = revisions(again, "kept")
        assert [listed[n]["created_by"] for n in (1, 2)] == [None, None]
        assert listed[1]["code_digest"] == listed[2]["code_digest"]


class TestCli:
    def test_deploy_traffic_revisions_tag_rollback(self, make_server: Any, tmp_path: Path) -> None:
        """The CLI loop: deploy, deploy --traffic 10, revisions, traffic, tag, rollback."""
        srv = make_server()
        folder = make_function(tmp_path, "slow", name="cli")
        assert torpor_cli("deploy", str(folder), server=srv.url).returncode == 0
        canary = torpor_cli("deploy", str(folder), "--traffic", "10", server=srv.url)
        assert canary.returncode == 0, canary.stderr
        assert "traffic 1=90% 2=10%" in canary.stdout
        listed = torpor_cli("revisions", "cli", "--json", server=srv.url)
        rows = json.loads(listed.stdout)
        assert [(r["revision"], r["percent"], r["latest"]) for r in rows] == [
            (1, 90, False), (2, 10, True)]
        assert rows[1]["created_by"]
        bad = torpor_cli("traffic", "cli", "1=50", "2=40", server=srv.url)
        assert bad.returncode == 1
        assert bad.stderr.strip() == "error: traffic: the weights must sum to 100, not 90"
        split = torpor_cli("traffic", "cli", "1=50", "2=50", server=srv.url)
        assert split.stdout.strip() == "cli: 1=50% 2=50%"
        tagged = torpor_cli("tag", "cli", "2", "canary", server=srv.url)
        assert tagged.stdout.strip() == "cli: 1=50% 2=50% @canary→2"
        rolled = torpor_cli("rollback", "cli", "--json", server=srv.url)
        assert json.loads(rolled.stdout)["weights"] == {"1": 100}
        assert json.loads(rolled.stdout)["tags"] == {"canary": 2}
        none_left = torpor_cli("rollback", "cli", server=srv.url)
        assert none_left.returncode == 1
        assert none_left.stderr.strip() == ("error: revision: 'cli' has no revision before 1 to "
                                            "roll back to")
