"""Ray Serve apps for the Ray peer benchmark, and the small agent that hosts them.

Runs only under the Ray venv's python (``bench/.venv-ray``, see ``bench/ray_peer.py``): it imports
nothing but the standard library and ray.

Apps (each deployed under route ``/<name>``):

- ``noop``: one replica, returns ``"ok"``, ``max_ongoing_requests=100`` (as in shared/BENCHMARKS.md).
- ``noop_scale_to_zero``: the same handler with autoscaling from 0 to 1 replica, starting at 0, with
  short delays so that it scales back to zero within seconds; Ray's default metrics push (10 s).
- ``noop_scale_to_zero_tuned``: the same with the handles' metrics pushed every 0.1 s
  (``metrics_interval_s``), Ray's fastest scale from zero: the controller starts a replica for a
  deployment at zero only when a handle's push reports the queued request.
- ``replay_sleep``: ``bench/replay``'s Ray Serve case. Each request sleeps its JSON body's
  ``sleep_s`` (none: 0) and answers ``"ok"``; one request at a time per replica
  (``max_ongoing_requests=1``, as on a GPU); autoscaling tuned as ``REPLAY_AUTOSCALING`` says.

Agent (``python bench/ray_apps.py --port P --temp-dir D --apps noop,...``): starts a local single-node
Ray (``ray.init``), Serve's HTTP proxy on 127.0.0.1:P, deploys the apps, prints one JSON line
``{"ready": true, "autoscaling": {app: config}, ...}`` and then answers one JSON line per command
read from stdin:

- ``status <app>``: ``{"status": ..., "replicas": {"RUNNING": n, ...}}`` from ``serve.status()``
- ``quit`` (or end of input): shuts Serve and Ray down and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import warnings
from typing import Any

import ray
from ray import serve

# look_back_period_s is compared with metrics_interval_s (10 s) and warned about; the look-back window
# is what sets how fast an idle replica goes, so keep it short and the warning quiet. metrics_interval_s
# is marked deprecated (its replacement environment variables are not read yet in 2.60) but is still
# the period of the handles' metrics pushes.
warnings.filterwarnings("ignore", message=".*look_back_period_s.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*metrics_interval_s.*", category=DeprecationWarning)

# Short scale-down so a benchmark round takes seconds, not the default 10 minutes; scale-up immediate.
SCALE_TO_ZERO_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 0,
    "initial_replicas": 0,
    "max_replicas": 1,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 0,
    "downscale_delay_s": 1.0,
    "downscale_to_zero_delay_s": 1.0,
    "look_back_period_s": 2.0,
}
SCALE_TO_ZERO_TUNED_AUTOSCALING: dict[str, Any] = {**SCALE_TO_ZERO_AUTOSCALING, "metrics_interval_s": 0.1}
# bench/replay's Ray Serve case, its defaults tuned for a trace of 50 ms-2 s requests one at a time:
# - target_ongoing_requests 1: one replica per request in the system (queued ones included), as
#   torpor's keep-alive policy and the KPA at target_utilization 1 ask for with concurrency 1;
# - upscale_delay_s 0 and metrics pushed every 0.1 s (Ray's defaults: 30 s and 10 s): a queued
#   request asks for a replica at the controller's next pass, not tens of seconds later;
# - look_back_period_s 2 (default 30): the average the decision reads follows the load;
# - downscale_delay_s 10 (default 600): a Ray replica takes seconds to start, so a surplus one is
#   kept 10 s (about ten of its starts: the ski-rental break-even torpor's own policy uses);
# - min_replicas 1: Ray's scale from zero waits for a metrics push and a replica start (seconds, see
#   bench/ray_peer.py), which no request of a 2.4 req/s trace should pay; one replica kept costs the
#   window's length, and torpor's default keeps its last instance through most gaps of this trace too;
# - max_replicas 10: torpor's max_instances in the same bench.
REPLAY_AUTOSCALING: dict[str, Any] = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": 10,
    "target_ongoing_requests": 1,
    "upscale_delay_s": 0,
    "downscale_delay_s": 10.0,
    "look_back_period_s": 2.0,
    "metrics_interval_s": 0.1,
}
# A replica reserves no CPU (Serve's default 1 would fit only 2 replicas on a 2-CPU Ray): it sleeps.
REPLAY_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0}


@serve.deployment(max_ongoing_requests=100, num_replicas=1)
class Noop:
    async def __call__(self, request: Any) -> str:
        return "ok"


@serve.deployment(max_ongoing_requests=100, autoscaling_config=SCALE_TO_ZERO_AUTOSCALING)
class NoopScaleToZero:
    async def __call__(self, request: Any) -> str:
        return "ok"


@serve.deployment(max_ongoing_requests=1, autoscaling_config=REPLAY_AUTOSCALING,
                  ray_actor_options=REPLAY_ACTOR_OPTIONS)
class ReplaySleep:
    async def __call__(self, request: Any) -> str:
        body = await request.body()
        await asyncio.sleep(float(json.loads(body).get("sleep_s", 0)) if body else 0.0)
        return "ok"


noop = Noop.bind()
noop_scale_to_zero = NoopScaleToZero.bind()
noop_scale_to_zero_tuned = NoopScaleToZero.options(
    name="NoopScaleToZeroTuned", autoscaling_config=SCALE_TO_ZERO_TUNED_AUTOSCALING).bind()

APPS: dict[str, Any] = {"noop": noop, "noop_scale_to_zero": noop_scale_to_zero,
                        "noop_scale_to_zero_tuned": noop_scale_to_zero_tuned,
                        "replay_sleep": ReplaySleep.bind()}
AUTOSCALING: dict[str, dict[str, Any]] = {"noop_scale_to_zero": SCALE_TO_ZERO_AUTOSCALING,
                                          "noop_scale_to_zero_tuned": SCALE_TO_ZERO_TUNED_AUTOSCALING,
                                          "replay_sleep": REPLAY_AUTOSCALING}


def app_status(name: str) -> dict[str, Any]:
    """Status of app ``name``: its state and the replica count per state over its deployments."""
    app = serve.status().applications.get(name)
    if app is None:
        return {"status": "MISSING", "replicas": {}}
    replicas: dict[str, int] = {}
    for deployment in app.deployments.values():
        for state, count in deployment.replica_states.items():
            key = str(getattr(state, "value", state))
            replicas[key] = replicas.get(key, 0) + int(count)
    return {"status": str(getattr(app.status, "value", app.status)), "replicas": replicas}


def reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="host Ray Serve apps for bench/ray_peer.py")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--apps", default="noop")
    parser.add_argument("--object-store-mb", type=int, default=200)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    names = [n for n in args.apps.split(",") if n]
    unknown = [n for n in names if n not in APPS]
    if unknown:
        reply({"ready": False, "error": f"unknown apps {unknown}; known: {sorted(APPS)}"})
        sys.exit(2)

    started = time.perf_counter()
    ray.init(
        num_cpus=args.num_cpus,
        object_store_memory=args.object_store_mb * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=args.temp_dir,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    for name in names:
        serve.run(APPS[name], name=name, route_prefix=f"/{name}")
    reply({"ready": True, "startup_s": time.perf_counter() - started,
           "apps": {name: app_status(name) for name in names},
           "autoscaling": {name: AUTOSCALING[name] for name in names if name in AUTOSCALING}})

    try:
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "quit":
                break
            if command == "status":
                try:
                    reply(app_status(argument))
                except Exception as error:  # report, keep serving commands
                    reply({"status": "ERROR", "replicas": {}, "error": repr(error)})
            else:
                reply({"error": f"unknown command {command!r}"})
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        reply({"stopped": True})


if __name__ == "__main__":
    main()
