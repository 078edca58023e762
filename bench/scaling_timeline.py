"""One burst through a real `torpor serve`, and the autoscaler's timeline, second by second.

    .venv/bin/python -m bench.scaling_timeline [--concurrency 8] [--burst-s 6] [--spec-defaults]

A function whose instances take one 200 ms request at a time gets a burst of concurrent clients;
every 0.5 s the timeline prints requests in the system (in flight + queued), the autoscaler's
desired count, and the ready instances, until the function is back at zero, and says when the last
instance stopped. By default the window is short (10 s stable window, 3 s grace, 1 s ticks);
``--spec-defaults`` uses the spec's defaults (Knative's: 60 s window, 30 s grace, 2 s ticks), where
the last instance goes 60-90 s after the burst (window, deactivation, then the grace unless the
gateway queue was already in the path that long).
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from bench.harness import ROOT, Server, write_json
from torpor.spec import ScalingSpec

FUNCTION = ROOT / "tests" / "functions" / "slow"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--burst-s", type=float, default=6.0)
    parser.add_argument("--service-ms", type=float, default=200.0)
    parser.add_argument("--spec-defaults", action="store_true",
                        help="the spec's scaling defaults instead of a short window")
    args = parser.parse_args()
    scaling: dict[str, Any] = {"max_instances": 6, "stable_window_s": 10, "tick_s": 1,
                               "scale_to_zero_grace_s": 3, "target_utilization": 0.7}
    if args.spec_defaults:
        defaults = ScalingSpec()
        scaling = {name: getattr(defaults, name) for name in (
            "stable_window_s", "tick_s", "scale_to_zero_grace_s", "target_utilization")}
        scaling["max_instances"] = 6
    limit_s = args.burst_s + scaling["stable_window_s"] + scaling["scale_to_zero_grace_s"] + 30
    server = Server()
    server.deploy(FUNCTION, scaling=scaling)
    stop = threading.Event()
    codes: list[int] = []

    def client() -> None:
        import httpx

        with httpx.Client(base_url=server.url, timeout=60, headers=server.http.headers) as http:
            while not stop.is_set():
                codes.append(http.post("/fn/slow/invoke",
                                       json={"sleep_s": args.service_ms / 1000}).status_code)

    timeline: list[dict[str, Any]] = []
    stopped_at: float | None = None
    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for thread in threads:
        thread.start()
    print(f"{'t_s':>6} {'in_system':>10} {'desired':>8} {'ready':>6} {'starting':>9}  reason")
    try:
        while True:
            t = time.monotonic() - started
            if t >= args.burst_s and not stop.is_set():
                stop.set()
            fn = server.http.get("/api/v1/functions/slow").json()
            states = fn["instance_states"]
            row = {"t_s": round(t, 2), "in_system": fn["in_flight"] + fn["queued"],
                   "desired": fn["desired"], "ready": states.get("ready", 0) + states.get("busy", 0),
                   "starting": states.get("starting", 0), "reason": fn["scaling_reason"]}
            timeline.append(row)
            print(f"{row['t_s']:>6.1f} {row['in_system']:>10} {row['desired']:>8} {row['ready']:>6} "
                  f"{row['starting']:>9}  {row['reason'][:90]}")
            if stop.is_set() and fn["instances"] == 0:
                stopped_at = t
                break
            if t > limit_s:
                raise RuntimeError(f"did not return to zero within {limit_s:g} s")
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.close()
    ok = sum(1 for c in codes if c == 200)
    print(f"\n{ok}/{len(codes)} requests answered 200")
    assert stopped_at is not None
    last_busy = max((row["t_s"] for row in timeline if row["in_system"] > 0), default=0.0)
    print(f"last instance stopped at t={stopped_at:.1f} s: {stopped_at - last_busy:.1f} s after the "
          f"last request left (stable window {scaling['stable_window_s']:g} s, "
          f"grace {scaling['scale_to_zero_grace_s']:g} s)")
    result = {"args": vars(args), "scaling": scaling, "timeline": timeline,
              "last_instance_stopped_s": stopped_at, "after_last_request_s": stopped_at - last_busy}
    print(f"wrote {write_json('scaling_timeline', result)}")


if __name__ == "__main__":
    main()
