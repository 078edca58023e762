"""Wake: a request to a warm instance vs one to a frozen instance (thaw included), in one run.

    .venv/bin/python -m bench.wake [--rounds 15]

A provisioned echo instance with idle mode: each round times one request while it is warm (sent
right after another) and one after it has frozen (idle_after_s passed); the thaw's cost is the
difference of the medians. Goal (BENCHMARKS.md): thaw adds ≤ 5 ms on a CPU.
"""

from __future__ import annotations

import argparse
import time

from bench.harness import ROOT, Server, ms, print_table, summary, write_json

IDLE_AFTER_S = 0.3


def instance_state(server: Server) -> str:
    rows = server.http.get("/api/v1/instances", params={"function": "echo"}).json()
    return str(rows[0]["state"]) if rows else "none"


def wait_for_state(server: Server, state: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while instance_state(server) != state:
        if time.monotonic() > deadline:
            raise RuntimeError(f"echo not {state} within {timeout_s}s")
        time.sleep(0.01)


def timed(server: Server, payload: dict[str, int]) -> tuple[float, str]:
    started = time.perf_counter()
    response = server.http.post("/fn/echo/invoke", json=payload)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
    return elapsed, response.headers["x-torpor-start"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    server = Server()
    warm: list[float] = []
    thawed: list[float] = []
    try:
        freezer = server.http.get("/healthz").json()["freezer"]
        server.deploy(ROOT / "examples" / "echo", scaling={
            "provisioned": 1, "min_instances": 0, "max_instances": 1, "idle_mode": True,
            "idle_after_s": IDLE_AFTER_S, "tick_s": 0.5})
        wait_for_state(server, "frozen")
        for n in range(args.rounds):
            elapsed, start = timed(server, {"n": n})  # wakes it
            if start != "thawed":
                raise RuntimeError(f"expected a thaw, got x-torpor-start: {start}")
            thawed.append(elapsed)
            elapsed, start = timed(server, {"n": n})  # right after: warm
            if start != "warm":
                raise RuntimeError(f"expected a warm instance, got {start}")
            warm.append(elapsed)
            wait_for_state(server, "frozen")
    finally:
        server.close()
    results = {"freezer": freezer, "warm_s": summary(warm), "thawed_s": summary(thawed)}
    added = results["thawed_s"]["median"] - results["warm_s"]["median"]
    results["thaw_added_s"] = added
    print_table(f"request latency, warm vs frozen (freezer: {freezer})",
                [("warm instance", results["warm_s"]), ("frozen instance (thaw included)",
                                                       results["thawed_s"])])
    print(f"\nthaw adds {ms(added)} ms at the median (goal ≤ 5 ms on a CPU)")
    print(f"wrote {write_json('wake', results)}")


if __name__ == "__main__":
    main()
