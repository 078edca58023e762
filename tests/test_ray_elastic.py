"""The elastic pool on Ray's fake multi-node autoscaler: a 1-CPU head in pool onprem, and a node
type ``cloud`` (1 CPU, ``pool:cloud``) that the autoscaler launches on demand and releases when
idle. onprem full → an instance waits on cloud → a cloud node is added → the instance runs there →
quiet: it is the first to go → the idle node is released.

(``ray.cluster_utils.AutoscalingCluster`` runs ``ray stop --force``, which would stop every Ray on
this shared machine, and its example config is not in the 2.60 wheel; so the head is started with
``cluster_utils.Cluster`` and the same fake-provider config, and leftovers are killed by pid.)
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from ray._private import services  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from tests.ray_helpers import (  # noqa: E402
    FAST_HEALTH_CHECKS,
    MB,
    invoke,
    kill_leftovers,
    make_revision,
    make_spec,
    ray_environment,
    scratch_dir,
)
from torpor.backends import Exit, InstancePlan  # noqa: E402
from torpor.backends.ray import RayBackend, RayConfig  # noqa: E402
from torpor.placement.pools import Placed, Pool, scale_in_order  # noqa: E402

POOLS = (Pool("onprem", 10), Pool("cloud", 1, elastic=True))
IDLE_TIMEOUT_MINUTES = 0.05  # a cloud node idle for 3 s is released

pytestmark = pytest.mark.timeout(180)


def autoscaler_config(gcs_address: str) -> dict[str, Any]:
    """Ray's fake multi-node provider: nodes are local raylets started by the autoscaler."""
    return {
        "cluster_name": "torpor-elastic", "max_workers": 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True,
                     "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1, "pool:onprem": 1000}, "node_config": {},
                                 "max_workers": 0},
            "cloud": {"resources": {"CPU": 1, "pool:cloud": 1000, "object_store_memory": 80 * MB},
                      "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = scratch_dir("elastic")
    with ray_environment(root, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1"):
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        ip = services.get_node_ip_address()
        config = Path(root) / "autoscaler.json"
        config.write_text(json.dumps(autoscaler_config(f"{ip}:{port}")))
        head = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"pool:onprem": 1000}, "object_store_memory": 80 * MB,
            "include_dashboard": False, "gcs_server_port": port, "autoscaling_config": str(config),
            "_system_config": FAST_HEALTH_CHECKS,
        })
        ray.init(address=head.address, namespace="torpor-elastic", log_to_driver=False)
        try:
            yield head
        finally:
            ray.shutdown()
            head.shutdown()
            kill_leftovers(root)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def backend(cluster: Cluster) -> Any:
    root = scratch_dir("elastic-nodes")
    # The fake autoscaler's node types cannot declare Ray's memory resource: ask for CPU only.
    ray_backend = RayBackend(RayConfig(address=cluster.address, pools=POOLS,
                                       namespace="torpor-elastic", node_root=root, try_s=1.0,
                                       wait_s=90.0, poll_s=0.25, node_lost_after_s=3.0,
                                       ask_memory=False))
    await ray_backend.startup()
    try:
        yield ray_backend
    finally:
        await ray_backend.shutdown()
        shutil.rmtree(root, ignore_errors=True)


async def test_burst_grows_cloud_then_quiet_releases_it(backend: RayBackend, tmp_path: Path) -> None:
    """onprem full → a cloud node is added for the second instance; quiet → the cloud instance is
    the scale-in victim and, once it has stopped, Ray releases the idle cloud node."""
    revision = make_revision(tmp_path, make_spec())
    began = time.perf_counter()
    on1 = await backend.start(InstancePlan("on1", revision))
    placed = [Placed("on1", on1.pool, time.perf_counter())]
    assert on1.pool == "onprem"
    assert {n.pool for n in backend.nodes() if n.alive} == {"onprem"}  # no cloud node yet
    burst = time.perf_counter()
    cl1 = await backend.start(InstancePlan("cl1", revision))
    grown_s = time.perf_counter() - burst
    placed.append(Placed("cl1", cl1.pool, time.perf_counter()))
    print(f"on1 on onprem at {burst - began:.1f}s; cl1 on a new cloud node after {grown_s:.1f}s")
    assert cl1.pool == "cloud"
    assert (await invoke(on1, {}))["instance"] == "on1"
    assert (await invoke(cl1, {}))["instance"] == "cl1"

    victims = scale_in_order(placed, POOLS)
    assert victims == ["cl1", "on1"]
    quiet = time.perf_counter()
    await backend.stop("cl1", 5.0)
    assert await backend.wait("cl1") == Exit(0)
    deadline = time.monotonic() + 60
    while any(n.alive and n.pool == "cloud" for n in backend.nodes()):
        assert time.monotonic() < deadline, "the idle cloud node was not released within 60 s"
        await backend.clock.sleep(0.25)
    released_s = time.perf_counter() - quiet
    print(f"cl1 stopped; the idle cloud node released {released_s:.1f}s later")
    assert (await invoke(on1, {"add": 1}))["counter"] == 1  # onprem untouched throughout
