"""The Ray backend on a real Ray cluster: a head (no CPUs) and two 2-CPU workers in pools onprem and
cloud, all on this machine. Instances are started through the backend directly, not through the
server. One cluster for the module; the node-loss test removes a node, so it runs last."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from tests.conftest import TorporServer  # noqa: E402
from tests.ray_helpers import (  # noqa: E402
    FAST_HEALTH_CHECKS,
    FUNCTIONS,
    MB,
    invoke,
    kill_leftovers,
    make_revision,
    make_spec,
    ray_environment,
    scratch_dir,
)
from torpor.backends import CodeRef, Exit, InstancePlan, RevisionPlan, StartFailed  # noqa: E402
from torpor.backends.ray import RayBackend, RayConfig  # noqa: E402
from torpor.placement.pools import Pool  # noqa: E402

POOLS = (Pool("onprem", 10), Pool("cloud", 1, elastic=True))
NODE_LOST_WITHIN_S = 6.0

pytestmark = pytest.mark.timeout(180)


class RayCluster:
    def __init__(self) -> None:
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "object_store_memory": 80 * MB, "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        })
        self.nodes = {
            pool: self.cluster.add_node(num_cpus=2, memory=2048 * MB, object_store_memory=80 * MB,
                                        resources={f"pool:{pool}": 1000})
            for pool in ("onprem", "cloud")
        }
        ray.init(address=self.cluster.address, namespace="torpor-test", log_to_driver=False)
        self.node_ids = {pool: node.node_id for pool, node in self.nodes.items()}

    def close(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    root = scratch_dir("pools")
    with ray_environment(root):
        ray_cluster = RayCluster()
        try:
            yield ray_cluster
        finally:
            ray_cluster.close()
            kill_leftovers(root)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def backend(cluster: RayCluster) -> Any:
    root = scratch_dir("pools-nodes")
    # try_s: a pool this backend counts as having room gets 3 s to place the group (Ray frees a
    # removed group's bundle asynchronously; on this loaded machine that can take over a second)
    ray_backend = RayBackend(RayConfig(address=cluster.cluster.address, pools=POOLS,
                                       namespace="torpor-test", node_root=root, try_s=3.0,
                                       wait_s=1.5, poll_s=0.25, node_lost_after_s=3.0))
    await ray_backend.startup()
    try:
        yield ray_backend
    finally:
        await ray_backend.shutdown()
        shutil.rmtree(root, ignore_errors=True)


class TestPools:
    async def test_onprem_first_then_cloud(self, backend: RayBackend, cluster: RayCluster,
                                           tmp_path: Path) -> None:
        """Four 1-CPU instances: onprem's two CPUs first, then cloud's; a fifth waits, then fails."""
        spec = make_spec()
        revision = make_revision(tmp_path, spec)
        backend.prepare(revision)
        shutil.rmtree(revision.code.path)
        started = []
        for n in range(4):
            began = time.perf_counter()
            started.append(await backend.start(InstancePlan(f"i{n}", revision)))
            print(f"i{n}: {started[-1].pool} {started[-1].address} forked={started[-1].forked} "
                  f"in {time.perf_counter() - began:.2f}s")
        assert [s.pool for s in started] == ["onprem", "onprem", "cloud", "cloud"]
        assert [s.node for s in started] == [cluster.node_ids["onprem"]] * 2 + [
            cluster.node_ids["cloud"]] * 2
        for n, s in enumerate(started):
            assert (await invoke(s, {"add": n}))["instance"] == f"i{n}"
        with pytest.raises(StartFailed, match="no node in pool 'cloud' had room"):
            await backend.start(InstancePlan("i4", revision))
        waiting = asyncio.ensure_future(backend.start(InstancePlan("i5", revision)))
        await asyncio.sleep(0.5)  # queued on cloud: its placement group is pending demand
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        groups = ray.util.placement_group_table().values()
        assert {g["state"] for g in groups if g["name"] in ("torpor-i4", "torpor-i5")} == {"REMOVED"}
        allocated = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            allocated = {n.pool: n.resources_allocated.get("CPU", 0.0) for n in backend.nodes()}
            if allocated == {"default": 0.0, "onprem": 2.0, "cloud": 2.0}:
                break
            await backend.clock.sleep(0.2)
        assert allocated == {"default": 0.0, "onprem": 2.0, "cloud": 2.0}
        for s in started:
            assert s.address.host == cluster.nodes[s.pool].node_ip_address
        for n in range(4):
            assert await backend.stop(f"i{n}", 5.0) == Exit(0)
            assert await backend.wait(f"i{n}") == Exit(0)

        # the same four at once (a burst): placement decisions are taken one at a time
        burst = await asyncio.gather(*(backend.start(InstancePlan(f"b{n}", revision))
                                       for n in range(4)))
        assert [s.pool for s in burst] == ["onprem", "onprem", "cloud", "cloud"]
        for n, s in enumerate(burst):
            assert (await invoke(s, {}))["instance"] == f"b{n}"
            await backend.stop(f"b{n}", 5.0)


class TestInstances:
    async def test_freeze_and_thaw_on_the_node(self, backend: RayBackend, tmp_path: Path) -> None:
        """A frozen instance answers nothing; thawed, it answers again with its state intact."""
        revision = make_revision(tmp_path, make_spec(scaling={"idle_mode": True}))
        started = await backend.start(InstancePlan("fz", revision))
        assert (await invoke(started, {"add": 5}))["counter"] == 5
        await backend.freeze("fz")
        async with httpx.AsyncClient(base_url=started.address.base_url, timeout=0.5) as client:
            with pytest.raises(httpx.TimeoutException):
                await client.post("/invoke", json={})
        await backend.thaw("fz")
        # 5, +1: the request the client gave up on while frozen did not run
        assert (await invoke(started, {"add": 1}))["counter"] == 6
        await backend.stop("fz", 5.0)
        assert await backend.wait("fz") == Exit(0)

    async def test_start_failure_carries_the_log(self, backend: RayBackend, tmp_path: Path) -> None:
        """A module that cannot be imported: StartFailed with the traceback from the node."""
        code = tmp_path / "bad"
        shutil.copytree(FUNCTIONS / "badimport", code)
        spec = make_spec(name="badimport", runtime={"handler": "model:Broken"})
        revision = RevisionPlan("badimport", 1, spec, CodeRef("b" * 64, code))
        with pytest.raises(StartFailed) as err:
            await backend.start(InstancePlan("bad1", revision, pools=("onprem",)))
        assert "ModuleNotFoundError: No module named 'torpor_no_such_module'" in err.value.log_tail
        assert backend.health()["instances"] == 0


class TestServe:
    def test_gateway_reaches_an_instance_on_a_ray_node(self, cluster: RayCluster,
                                                       tmp_path: Path) -> None:
        """``torpor serve`` with ``backend: ray``: a deployed function cold-starts on the onprem
        node and the gateway answers through it; instances and nodes show node and pool."""
        config = tmp_path / "config.yaml"
        node_root = scratch_dir("serve-nodes")
        config.write_text(yaml.safe_dump({
            "backend": "ray", "ray_address": cluster.cluster.address, "ray_node_root": node_root,
            "pools": [{"name": "onprem", "priority": 10}, {"name": "cloud", "priority": 1}],
        }))
        server = TorporServer(tmp_path / "data", extra_args=["--config", str(config)])
        try:
            server.deploy(FUNCTIONS / "stateful")
            response = server.invoke("stateful", {"add": 2})
            assert response.status_code == 200, response.text
            assert response.json()["counter"] == 2
            assert response.headers["x-torpor-start"] == "cold"
            [instance] = server.instances("stateful")
            assert (instance["node"], instance["pool"]) == (cluster.node_ids["onprem"], "onprem")
            assert server.invoke("stateful", {"add": 1}).json()["counter"] == 3
            nodes = server.http.get("/api/v1/nodes").json()
            assert sorted(n["pool"] for n in nodes) == ["cloud", "default", "onprem"]
        finally:
            assert server.stop() == 0
            shutil.rmtree(node_root, ignore_errors=True)


class TestServeNodeLoss:
    def test_in_flight_502_then_a_replacement_elsewhere(self, cluster: RayCluster,
                                                       tmp_path: Path) -> None:
        """Through ``torpor serve``: a node removed under a request answers that request 502
        naming the instance (no hang), marks the instance failed with ``node <id> lost``, and the
        next request is served by a replacement on a surviving node."""
        edge = cluster.cluster.add_node(num_cpus=1, memory=1024 * MB, object_store_memory=80 * MB,
                                        resources={"pool:edge": 1000})
        cluster.cluster.wait_for_nodes()
        config = tmp_path / "config.yaml"
        node_root = scratch_dir("serve-loss-nodes")
        config.write_text(yaml.safe_dump({
            "backend": "ray", "ray_address": cluster.cluster.address, "ray_node_root": node_root,
            "pools": [{"name": "edge", "priority": 20}, {"name": "onprem", "priority": 10},
                      {"name": "cloud", "priority": 1}],
        }))
        folder = tmp_path / "slow"
        shutil.copytree(FUNCTIONS / "slow", folder)
        spec = yaml.safe_load((folder / "torpor.yaml").read_text())
        spec["placement"] = {"pools": ["edge", "cloud"]}
        spec["scaling"]["max_instances"] = 1
        (folder / "torpor.yaml").write_text(yaml.safe_dump(spec))
        server = TorporServer(tmp_path / "data", extra_args=["--config", str(config)])
        try:
            server.deploy(folder)
            first = server.invoke("slow", {"sleep_s": 0})
            assert first.status_code == 200, first.text
            lost = first.headers["x-torpor-instance"]
            [instance] = server.instances("slow")
            assert instance["pool"] == "edge"
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(server.invoke, "slow", {"sleep_s": 30})
                time.sleep(0.5)  # the request is in the instance now
                began = time.monotonic()
                cluster.cluster.remove_node(edge, allow_graceful=False)
                answer = in_flight.result(timeout=NODE_LOST_WITHIN_S + 5)
                took_s = time.monotonic() - began
            assert answer.status_code == 502, answer.text
            assert answer.json()["reason"] == "instance_failed"
            assert lost in answer.json()["error"]
            assert took_s < NODE_LOST_WITHIN_S + 5
            # the loss is noticed within seconds; until then a request may still be sent to the
            # lost instance's pooled connection (and answered 502 like the one in flight)
            server.wait_for(lambda: {i["id"]: i for i in server.instances("slow", all=True)}[lost][
                "state"] == "failed", timeout_s=NODE_LOST_WITHIN_S, what="the lost instance failed")
            again = server.invoke("slow", {"sleep_s": 0})
            assert again.status_code == 200, again.text
            assert again.headers["x-torpor-instance"] != lost
            rows = {i["id"]: i for i in server.instances("slow", all=True)}
            assert rows[lost]["state"] == "failed"
            assert rows[lost]["failure"].startswith("node ") and rows[lost]["failure"].endswith(" lost")
            assert rows[again.headers["x-torpor-instance"]]["pool"] == "cloud"
            print(f"edge node removed: the request in flight answered 502 after {took_s:.2f}s; "
                  f"replacement {again.headers['x-torpor-instance']} on cloud")
        finally:
            assert server.stop() == 0
            shutil.rmtree(node_root, ignore_errors=True)


class TestNodeLoss:
    async def test_removed_node_ends_its_instances(self, backend: RayBackend, cluster: RayCluster,
                                                   tmp_path: Path) -> None:
        """The onprem node removed: its instances end with 'node <id> lost' within seconds; the
        cloud instance keeps answering and a replacement starts on cloud."""
        spec = make_spec()
        revision = make_revision(tmp_path, spec)
        on1 = await backend.start(InstancePlan("on1", revision))
        on2 = await backend.start(InstancePlan("on2", revision))
        cl1 = await backend.start(InstancePlan("cl1", revision, pools=("cloud",)))
        assert (on1.pool, on2.pool, cl1.pool) == ("onprem", "onprem", "cloud")
        lost = cluster.node_ids["onprem"]
        await invoke(on1, {})
        async with httpx.AsyncClient(base_url=on1.address.base_url, timeout=60) as client:
            in_flight = asyncio.ensure_future(client.post("/invoke", json={"sleep_s": 30}))
            await asyncio.sleep(0.3)  # the request is in the instance now
            began = time.perf_counter()
            cluster.cluster.remove_node(cluster.nodes["onprem"], allow_graceful=False)
            exits = [await backend.wait("on1"), await backend.wait("on2")]
            took_s = time.perf_counter() - began
            with pytest.raises(httpx.TransportError):  # broken off, not left hanging
                await asyncio.wait_for(in_flight, NODE_LOST_WITHIN_S)
            broken_s = time.perf_counter() - began
        print(f"node {lost[:12]} removed; both instances ended in {took_s:.2f}s; "
              f"the request in flight broke off after {broken_s:.2f}s")
        assert exits == [Exit(None, f"node {lost} lost")] * 2
        assert took_s < NODE_LOST_WITHIN_S
        assert (await invoke(cl1, {"add": 1}))["instance"] == "cl1"
        replacement = await backend.start(InstancePlan("on3", revision))
        assert (replacement.pool, replacement.node) == ("cloud", cluster.node_ids["cloud"])
        assert (await invoke(replacement, {}))["instance"] == "on3"
        deadline = time.monotonic() + NODE_LOST_WITHIN_S
        while {n.id: n.alive for n in backend.nodes()}[lost]:  # as Ray's health checks see it
            assert time.monotonic() < deadline, "nodes() still shows the removed node alive"
            await asyncio.sleep(0.1)
