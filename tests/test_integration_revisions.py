"""Revisions on real processes: a weighted split, tags, rollback under load, scale to zero at 0 %."""

from __future__ import annotations

import json
import re
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

        clients = [httpx.Client(base_url=srv.url, timeout=30, headers=srv.http.headers)
                   for _ in range(4)]
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
        metrics = srv.http.get("/metrics").text
        assert 'torpor_revision_traffic_percent{function="split",revision="1"} 80.0' in metrics
        count = f'torpor_revision_requests_total{{function="split",revision="2"}} {by_revision["2"]}.0'
        assert count in metrics
        bill = srv.http.get("/api/v1/billing", params={"function": "split"}).json()
        assert [(line["function"], line["revision"]) for line in bill["revisions"]] == [
            ("split", 1), ("split", 2)]

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
            with httpx.Client(base_url=srv.url, timeout=30, headers=srv.http.headers) as client:
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
        key_id = srv.api_key.split("_")[1]  # tp_<id>_<secret>: the key that deployed them
        assert [listed[n]["created_by"] for n in (1, 2)] == [f"default/{key_id}"] * 2
        assert listed[1]["code_digest"] == listed[2]["code_digest"]
        # rolled back to 1, the newest revision (2) takes no traffic after a restart either
        again.http.delete("/api/v1/functions/kept/tags/canary")
        assert again.http.post("/api/v1/functions/kept/rollback", json={"revision": 1}).json()[
            "weights"] == {"1": 100}
        again.stop()
        third = make_server(data_dir=data_dir)
        assert third.http.get("/api/v1/functions/kept/traffic").json()["weights"] == {"1": 100}
        assert third.function("kept")["revision"] == 2
        assert {third.invoke("kept", {}).headers["x-torpor-revision"] for _ in range(3)} == {"1"}


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


def deploy_with(srv: TorporServer, folder: Path, **extra: Any) -> httpx.Response:
    """Deploy as ``torpor deploy`` does, with extra fields in the request (``rollout``)."""
    from torpor.code import pack_dir
    from torpor.spec import load_spec_file

    _, raw, base_dir = load_spec_file(folder)
    archive = pack_dir(base_dir)
    srv.http.put(f"/api/v1/code/{archive.digest}", content=archive.data)
    return srv.http.post("/api/v1/functions", json={"spec": raw, "code": archive.digest,
                                                    "source": str(folder), **extra})


class Load:
    """A few threads sending requests until stopped; keeps (status, x-torpor-revision)."""

    def __init__(self, srv: TorporServer, path: str, threads: int = 2) -> None:
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(threads)
        for _ in range(threads):
            self._pool.submit(self._run, srv, path)

    def _run(self, srv: TorporServer, path: str) -> None:
        with httpx.Client(base_url=srv.url, timeout=30, headers=srv.http.headers) as client:
            while not self._stop.is_set():
                r = client.post(path, json={"sleep_s": 0.02})
                self.results.append((r.status_code, r.headers.get("x-torpor-revision", "")))

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)


class TestRollout:
    def test_rollout_steps_to_100(self, make_server: Any, tmp_path: Path) -> None:
        """--rollout 10,50,100 --every 1s: the split steps on by itself and ends at 2=100."""
        srv = make_server()
        folder = make_function(tmp_path, "slow", name="steps", scaling={"max_instances": 2})
        srv.deploy(folder)
        srv.invoke("steps", {})
        rollout = {"steps": [10, 50, 100], "every_s": 1.0}
        deployed = deploy_with(srv, folder, rollout=rollout)
        assert deployed.status_code == 201, deployed.text
        assert deployed.json()["traffic"]["weights"] == {"1": 90, "2": 10}
        load = Load(srv, "/fn/steps/invoke")
        try:
            status = srv.wait_for(
                lambda: (r := srv.http.get("/api/v1/functions/steps/rollout").json())["status"]
                != "running" and r, timeout_s=30, what="rollout done")
        finally:
            load.stop()
        assert status["status"] == "done", status
        assert [e["weights"] for e in status["timeline"]] == [
            {"1": 90, "2": 10}, {"1": 50, "2": 50}, {"2": 100}, {"2": 100}]
        old = [e["revision_1"]["requests"] for e in status["timeline"]]
        assert old == sorted(old) and old[-1] > 0  # counted on after revision 1 scaled to zero
        assert {code for code, _ in load.results} == {200}
        assert srv.http.get("/api/v1/functions/steps/traffic").json()["weights"] == {"2": 100}

    def test_automatic_rollback_on_a_revision_failing_half(self, make_server: Any,
                                                           tmp_path: Path) -> None:
        """Revision 2 fails every other request: the rollout puts all traffic back on 1."""
        srv = make_server()
        good = make_function(tmp_path, "halfbad")
        srv.deploy(good)
        srv.invoke("halfbad", {})
        bad = make_function(tmp_path, "halfbad", env={"FAIL_HALF": "1"})
        rollout = {"steps": [50, 100], "every_s": 60, "max_error_margin": 0.1,
                   "min_requests": 10}
        assert deploy_with(srv, bad, rollout=rollout).json()["traffic"]["weights"] == {
            "1": 50, "2": 50}
        load = Load(srv, "/fn/halfbad/invoke")
        try:
            status = srv.wait_for(
                lambda: (r := srv.http.get("/api/v1/functions/halfbad/rollout").json())["status"]
                != "running" and r, timeout_s=30, what="automatic rollback")
        finally:
            load.stop()
        assert status["status"] == "rolled_back", status
        rate = int(re.match(r"error rate (\d+)%", status["reason"]).group(1))  # type: ignore[union-attr]
        assert 40 <= rate <= 60, status["reason"]  # about half of revision 2's requests fail
        assert srv.http.get("/api/v1/functions/halfbad/traffic").json()["weights"] == {"1": 100}
        events = [e["message"] for e in srv.function("halfbad")["events"]]
        assert any("rolled back automatically" in e for e in events)
        last = status["timeline"][-1]
        assert last["event"] == "rollback" and last["weights"] == {"1": 100}
        assert last["revision_1"]["errors"] == 0
        assert last["revision_2"]["errors"] >= 5
