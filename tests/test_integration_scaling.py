"""The autoscaler on real processes: bursts scale out, quiet returns to the provisioned count."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_function

pytestmark = pytest.mark.timeout(120)


def live_states(srv: Any, name: str) -> list[str]:
    return sorted(i["state"] for i in srv.instances(name))


class TestProvisioned:
    def test_provisioned_kept_and_burst_returns_to_it(self, make_server: Any, tmp_path: Path) -> None:
        """provisioned: 1 starts at deploy; a burst scales out; quiet returns to exactly 1."""
        folder = make_function(tmp_path, "slow", scaling={
            "provisioned": 1, "max_instances": 3, "stable_window_s": 6, "tick_s": 0.5,
            "scale_to_zero_grace_s": 1,
        })
        srv = make_server([folder])
        srv.wait_for(lambda: live_states(srv, "slow") == ["ready"], what="provisioned instance")
        (provisioned,) = srv.instances("slow")
        assert provisioned["provisioned"] is True
        # idle provisioned instance takes the next request
        assert srv.invoke("slow", {"sleep_s": 0}).headers["x-torpor-instance"] == provisioned["id"]

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda n: srv.invoke("slow", {"n": n, "sleep_s": 0.8}), range(6)))
        assert [r.status_code for r in results] == [200] * 6
        assert len({r.headers["x-torpor-instance"] for r in results}) == 3
        # after the stable window (6 s) and the grace period: back to the provisioned count
        srv.wait_for(lambda: live_states(srv, "slow") == ["ready"], timeout_s=30,
                     what="scale back to provisioned")
        assert [i["id"] for i in srv.instances("slow")] == [provisioned["id"]]
        events = [e["message"] for e in srv.function("slow")["events"] if e["kind"] == "scaled"]
        assert any("→3: panic, " in m for m in events), events
        assert any(m.startswith("slow 3→1: stable, ") or m.startswith("slow 2→1: stable, ")
                   for m in events), events

    def test_provision_api_accepts_function_compute_json(self, make_server: Any, tmp_path: Path) -> None:
        """PUT provision.json (FC's shape) sets the target; GET shows target and current."""
        folder = make_function(tmp_path, "slow", scaling={"max_instances": 3, "tick_s": 0.5})
        srv = make_server([folder])
        fc = {
            "target": 2,
            "targetTrackingPolicies": [{
                "name": "night", "startTime": "2000-01-01T00:00:00Z", "endTime": "2000-01-02T00:00:00Z",
                "metricType": "ProvisionedConcurrencyUtilization", "metricTarget": 0.3,
                "minCapacity": 1, "maxCapacity": 3,
            }],
        }
        response = srv.http.put("/api/v1/functions/slow/provision", json=fc)
        assert response.status_code == 200, response.text
        assert response.json()["configured_target"] == 2
        srv.wait_for(lambda: live_states(srv, "slow") == ["ready", "ready"], what="two provisioned")
        shown = srv.http.get("/api/v1/functions/slow/provision").json()
        assert (shown["target"], shown["current"]) == (2, 2)
        assert shown["fc"]["targetTrackingPolicies"][0]["metricTarget"] == 0.3
        # the target tracking window is in the past: the static target holds
        assert shown["reason"].startswith("provisioned 2 (static target 2)")

        bad = srv.http.put("/api/v1/functions/slow/provision", json={
            "targetTrackingPolicies": [{"name": "x", "metricType": "ProvisionedConcurrencyUtilization",
                                        "minCapacity": 1, "maxCapacity": 2}]})
        assert bad.status_code == 422
        assert "targetTrackingPolicies.0.metricTarget: Field required" in bad.json()["errors"]

        lowered = srv.http.put("/api/v1/functions/slow/provision", json={"target": 0})
        assert lowered.status_code == 200
        assert lowered.json()["configured_target"] == 0

    def test_provision_cli(self, make_server: Any, tmp_path: Path) -> None:
        """`torpor provision NAME --target N` sets and shows target and current."""
        from tests.conftest import torpor_cli

        folder = make_function(tmp_path, "slow", scaling={"tick_s": 0.5})
        srv = make_server([folder])
        result = torpor_cli("provision", "slow", "--target", "1", "--json", server=srv.url)
        assert result.returncode == 0, result.stderr
        srv.wait_for(lambda: live_states(srv, "slow") == ["ready"], what="provisioned instance")
        shown = torpor_cli("provision", "slow", server=srv.url)
        assert shown.returncode == 0
        assert "slow" in shown.stdout and " 1 " in shown.stdout
        policies = tmp_path / "provision.json"
        policies.write_text('{"targetTrackingPolicies": [{"name": "p"}]}')
        bad = torpor_cli("provision", "slow", "--policies", str(policies), server=srv.url)
        assert bad.returncode == 1
        assert "targetTrackingPolicies.0.metricType" in bad.stderr


class TestBurst:
    def test_scale_up_within_ticks_and_down_to_zero(self, make_server: Any, tmp_path: Path) -> None:
        """A burst of 4 concurrent requests reaches 3 instances at once; quiet goes back to 0."""
        folder = make_function(tmp_path, "slow", scaling={
            "max_instances": 3, "stable_window_s": 6, "tick_s": 0.5, "scale_to_zero_grace_s": 1,
        })
        srv = make_server([folder])
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(srv.invoke, "slow", {"n": n, "sleep_s": 1.5}) for n in range(4)]
            srv.wait_for(lambda: len(srv.instances("slow")) == 3, timeout_s=5, what="3 instances")
            assert time.monotonic() - started < 5
            assert [f.result().status_code for f in futures] == [200] * 4
        srv.wait_for(lambda: srv.instances("slow") == [], timeout_s=30, what="scale to zero")
        fn = srv.function("slow")
        assert (fn["desired"], fn["in_flight"], fn["queued"]) == (0, 0, 0)


class TestBurstCapacity:
    @pytest.mark.parametrize(("burst_capacity", "in_flight", "queued"), [(0, 3, 0), (211, 1, 2)])
    def test_burst_capacity_decides_where_requests_wait(
        self, make_server: Any, tmp_path: Path, burst_capacity: int, in_flight: int, queued: int
    ) -> None:
        """target_burst_capacity 0: with its one instance ready and wanted, requests beyond its
        concurrency go to it and wait there; the default 211 keeps them in the gateway queue."""
        folder = make_function(tmp_path, "slow", scaling={
            "max_instances": 1, "target_burst_capacity": burst_capacity, "tick_s": 0.5})
        srv = make_server([folder])
        assert srv.invoke("slow", {"sleep_s": 0}).status_code == 200  # one ready instance
        srv.wait_for(lambda: srv.function("slow")["desired"] == 1, what="decided")
        time.sleep(0.6)  # a tick with the instance ready: excess burst capacity 0, out of the path
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(srv.invoke, "slow", {"n": n, "sleep_s": 0.5}) for n in range(3)]
            time.sleep(0.25)
            fn = srv.function("slow")
            assert (fn["in_flight"], fn["queued"]) == (in_flight, queued)
            assert [f.result().status_code for f in futures] == [200] * 3


class TestKeepAlivePolicy:
    def test_scales_per_request_and_lets_go_after_the_keep_alive(
        self, make_server: Any, tmp_path: Path
    ) -> None:
        """policy keepalive, keep-alive 2 s: a burst of 3 starts 3 at once; each stops once idle
        for its 2 s keep-alive (the KPA with the function's 6 s window keeps them 6 s or more);
        torpor get says which policy runs and why."""
        folder = make_function(tmp_path, "slow", scaling={
            "policy": "keepalive", "keep_alive_s": 2, "max_instances": 3, "tick_s": 0.5})
        srv = make_server([folder])
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda n: srv.invoke("slow", {"n": n, "sleep_s": 0.5}), range(3)))
        ended = time.monotonic()
        assert [r.status_code for r in results] == [200] * 3
        assert len({r.json()["instance"] for r in results}) == 3
        fn = srv.function("slow")
        assert (fn["scaling_policy"], fn["scaling_policy_why"]) == ("keepalive", "scaling.policy in the spec")
        assert fn["scaling_reason"].startswith("keepalive, ")
        assert "idle instances kept 2.00 s (scaling.keep_alive_s)" in fn["scaling_reason"]
        srv.wait_for(lambda: srv.instances("slow") == [], timeout_s=15, what="scale to zero")
        assert 1.5 < time.monotonic() - ended < 5
