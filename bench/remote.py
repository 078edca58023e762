"""A no-op on another Ray node, side by side: through torpor's gateway (``torpor serve --ray``) and
through Ray Serve's own HTTP proxy, both on the same Ray cluster, in one run, alternated per round.

    python -m bench.remote [--rounds 3] [--c1-requests 1000] [--c32-seconds 3]

The cluster (``ray.cluster_utils.Cluster``, on this machine): a head with no CPUs, where torpor's
gateway and Serve's proxy and controller run, and one 2-CPU worker node in pool ``onprem``, where
torpor's instance and Serve's replica run. So both paths cross from the head to another node (on one
machine that is loopback TCP between processes, not a network).

- torpor: ``bench/functions/noop`` (concurrency 100, one instance) deployed on ``torpor serve`` with
  ``backend: ray``; the gateway proxies over kept-alive TCP to the instance's node IP and port.
- Ray Serve 2.60: the same no-op as a deployment (one replica, ``max_ongoing_requests=100``, 1 CPU),
  its proxy on 127.0.0.1; needs ``ray[serve]==2.60.0`` in this venv, else it is skipped with a note.
- concurrency 1: p50 of sequential POSTs on one kept-alive connection; concurrency 32: ``hey``'s
  req/s (both from ``bench/gateway.py``).

Goals (issue 9): torpor's p50 ≤ 1/5 of Ray Serve's and its throughput ≥ 5×. Writes
bench/results/remote.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.gateway import NOOP, hey_c32, latency_c1, summarize
from bench.harness import Server, free_port, write_json

TORPOR, RAY = "torpor", "ray"
MB = 2**20
GOALS = {"c1_vs_ray": 5.0, "c32_vs_ray": 5.0}


@contextmanager
def ray_cluster(root: str) -> Iterator[Any]:
    """A head without CPUs and one worker node in pool onprem; Ray's files under ``root``."""
    os.environ.update(RAY_TMPDIR=root, RAY_USAGE_STATS_ENABLED="0")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 80 * MB, "include_dashboard": False})
    cluster.add_node(num_cpus=2, object_store_memory=80 * MB, resources={"pool:onprem": 1000})
    ray.init(address=cluster.address, namespace="bench-remote", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@contextmanager
def torpor_noop(address: str, node_root: str) -> Iterator[tuple[str, dict[str, int]]]:
    config = Path(node_root) / "config.yaml"
    config.write_text(json.dumps({"backend": "ray", "ray_address": address, "ray_node_root": node_root,
                                  "pools": [{"name": "onprem", "priority": 10}]}))
    server = Server(["--config", str(config)])
    try:
        server.deploy(NOOP)
        deadline = time.monotonic() + 120
        while server.http.post("/fn/noop/invoke").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("torpor's noop did not answer within 120 s")
            time.sleep(0.1)
        [instance] = server.http.get("/api/v1/instances", params={"function": "noop"}).json()
        print(f"torpor: instance {instance['id']} on node {instance['node'][:12]} "
              f"(pool {instance['pool']}), gateway on the head", flush=True)
        yield f"{server.url}/fn/noop/invoke", {"gateway": server.process.pid}
    finally:
        server.close()


@contextmanager
def serve_noop() -> Iterator[tuple[str, dict[str, int]] | None]:
    try:
        from ray import serve
    except ImportError:
        yield None
        return

    @serve.deployment(max_ongoing_requests=100, num_replicas=1, ray_actor_options={"num_cpus": 1})
    class Noop:
        async def __call__(self, request: Any) -> str:
            return "ok"

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Noop.bind(), name="noop", route_prefix="/noop")
    try:
        yield f"http://127.0.0.1:{port}/noop", {}
    finally:
        serve.shutdown()


def report(rounds: dict[str, list[dict[str, float]]], ray_skipped: str | None) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    print(f"\n  {'measure (over rounds)':<44} {'median':>10} {'min':>10} {'max':>10}")
    for target in (TORPOR, RAY):
        for key, scale, unit in (("c1_p50_s", 1000, "ms"), ("c32_rps", 1, "req/s")):
            if rounds.get(target):
                s = table[f"{target}.{key}"] = summarize([r[key] for r in rounds[target]])
                print(f"  {target + ': ' + key:<44} {s['median'] * scale:>10.3f} "
                      f"{s['min'] * scale:>10.3f} {s['max'] * scale:>10.3f}  {unit}")
    results: dict[str, Any] = {"rounds": rounds, "table": table, "cpus": os.cpu_count()}
    if not rounds.get(RAY):
        print(f"\n  Ray Serve: skipped ({ray_skipped})")
        return results
    t_c1, r_c1 = table["torpor.c1_p50_s"]["median"], table["ray.c1_p50_s"]["median"]
    t_rps, r_rps = table["torpor.c32_rps"]["median"], table["ray.c32_rps"]["median"]
    goals = {f"c=1 p50 {r_c1 / t_c1:.1f}x lower than Ray Serve's (>= 5x)":
             r_c1 / t_c1 >= GOALS["c1_vs_ray"],
             f"c=32 throughput {t_rps / r_rps:.1f}x Ray Serve's (>= 5x)":
             t_rps / r_rps >= GOALS["c32_vs_ray"]}
    results["goals"] = goals
    print("\n  goals (issue 9):")
    for text, met in goals.items():
        print(f"    [{'met' if met else 'MISSED'}] {text}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--c1-requests", type=int, default=1000)
    parser.add_argument("--c32-seconds", type=float, default=3.0)
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("bench/remote needs the load generator hey: apt-get install -y hey")
    root = tempfile.mkdtemp(prefix="tbr", dir="/tmp")  # short: Ray's Unix sockets live below it
    rounds: dict[str, list[dict[str, float]]] = {TORPOR: [], RAY: []}
    ray_skipped = "ray[serve] is not installed here: pip install 'ray[serve]==2.60.0'"
    try:
        with ray_cluster(root) as cluster, \
                torpor_noop(cluster.address, tempfile.mkdtemp(prefix="n", dir=root)) as torpor, \
                serve_noop() as ray_target:
            targets = {TORPOR: torpor}
            if ray_target is not None:
                targets[RAY] = ray_target
            for i in range(args.rounds):
                for target in (list(targets) if i % 2 == 0 else list(reversed(targets))):
                    url, pids = targets[target]
                    c1 = latency_c1(url, args.c1_requests if target != RAY else args.c1_requests // 4)
                    c32 = hey_c32(url, args.c32_seconds, pids)
                    rounds[target].append({"c1_p50_s": statistics.median(c1),
                                           "c32_rps": c32["rps"], "c32_p50_s": c32["p50_s"]})
                    print(f"round {i + 1}/{args.rounds} {target:<6} c=1 p50 "
                          f"{statistics.median(c1) * 1000:7.3f} ms   c=32 {c32['rps']:8.0f} req/s",
                          flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = report(rounds, ray_skipped)
    results["config"] = vars(args)
    print(f"\nwrote {write_json('remote', results)}")


if __name__ == "__main__":
    main()
