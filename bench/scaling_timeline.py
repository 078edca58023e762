"""One burst through a real `torpor serve`, and the autoscaler's timeline, second by second.

    .venv/bin/python -m bench.scaling_timeline [--concurrency 8] [--burst-s 6]

A function whose instances take one 200 ms request at a time gets a burst of concurrent clients;
every 0.5 s the timeline prints requests in the system (in flight + queued), the autoscaler's
desired count, and the ready instances, until the function is back at zero.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

from bench.harness import ROOT, Server, write_json

FUNCTION = ROOT / "tests" / "functions" / "slow"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--burst-s", type=float, default=6.0)
    parser.add_argument("--service-ms", type=float, default=200.0)
    args = parser.parse_args()
    server = Server()
    server.deploy(FUNCTION, scaling={"max_instances": 6, "stable_window_s": 10, "tick_s": 1,
                                     "scale_to_zero_grace_s": 3, "target_utilization": 0.7})
    stop = threading.Event()
    codes: list[int] = []

    def client() -> None:
        import httpx

        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                codes.append(http.post("/fn/slow/invoke",
                                       json={"sleep_s": args.service_ms / 1000}).status_code)

    timeline: list[dict[str, Any]] = []
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
                break
            if t > args.burst_s + 60:
                raise RuntimeError("did not return to zero within 60 s of the burst")
            time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.close()
    ok = sum(1 for c in codes if c == 200)
    print(f"\n{ok}/{len(codes)} requests answered 200")
    print(f"wrote {write_json('scaling_timeline', {'args': vars(args), 'timeline': timeline})}")


if __name__ == "__main__":
    main()
