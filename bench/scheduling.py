"""Scheduling quality: torpor's default routing against conventional round-robin, same run.

    python -m bench.scheduling [--rounds 3] [--requests 1000] [--load 0.7]

Three instances that each execute one request at a time, as a GPU does (bench/functions/
one_at_a_time: a handler that holds a lock while it works), Poisson arrivals at 70 % load, service
times drawn from real execution times. Two deployments of the same handler, alternated per round,
each fed the same arrivals and service times within a round:

- torpor's default: ``concurrency: 1`` and ``least_outstanding``: a request waits at the gateway
  until an instance is free, then goes to it (seed 000's workload-aware scheduling);
- conventional round-robin (what a Kubernetes Service does): ``round_robin`` with a large
  ``concurrency``, so each request is pushed to the next instance at once and queues inside it,
  behind its lock.

Both pinned at 3 instances (``min_instances = max_instances = 3``). Latency is measured from each
request's scheduled arrival to its last byte (open loop: a slow answer does not delay later
arrivals). A queueing simulation of the same arrivals and service times (central FCFS queue vs
round-robin to per-instance FCFS queues, no overheads) is printed beside the measurement.

Service times: ``exec_time_seconds`` of ``lora_request_trace.csv`` (successful requests), read as
milliseconds. Source: Alibaba GenTD26 trace, alibaba/clusterdata ``cluster-trace-v2026-GenAI``
(Lin et al., SoCC'25; EuroSys'26 FlexPipe); for research and study use only.

Writes bench/results/scheduling.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import heapq
import random
import statistics
import time
from pathlib import Path

import aiohttp

from bench.harness import ROOT, Server, write_json

TRACE = ROOT.parent / "shared" / "traces" / "alibaba-genai-2026" / "lora_request_trace.csv"
if not TRACE.exists():
    TRACE = Path("/work/shared/traces/alibaba-genai-2026/lora_request_trace.csv")
ATTRIBUTION = ("service times: exec_time_seconds of lora_request_trace.csv read as milliseconds; "
               "Alibaba GenTD26 (alibaba/clusterdata cluster-trace-v2026-GenAI; Lin et al., SoCC'25; "
               "EuroSys'26 FlexPipe), research and study use")
FUNCTION = ROOT / "bench" / "functions" / "one_at_a_time"
INSTANCES = 3
POLICIES = {
    "torpor default (gateway queue, least_outstanding)": {
        "name": "sched-default", "concurrency": 1, "routing": {"policy": "least_outstanding"}},
    "conventional round-robin (queue in each instance)": {
        "name": "sched-rr", "concurrency": 1000, "routing": {"policy": "round_robin"}},
}
GOALS = {"p99": 0.75, "p90": 0.85}


def service_times_ms(path: Path = TRACE) -> list[float]:
    with path.open(newline="") as f:
        return [float(row["exec_time_seconds"]) for row in csv.DictReader(f)
                if row["predict_status"] == "SUCCEED" and float(row["exec_time_seconds"] or 0) > 0]


def workload(population: list[float], requests: int, load: float, seed: int
             ) -> list[tuple[float, float]]:
    """(arrival offset s, service ms) pairs: Poisson arrivals at ``load`` of 3 instances' capacity."""
    rng = random.Random(seed)
    rate = load * INSTANCES / (statistics.mean(population) / 1000)  # requests per second
    t, out = 0.0, []
    for _ in range(requests):
        t += rng.expovariate(rate)
        out.append((t, rng.choice(population)))
    return out


def simulate(jobs: list[tuple[float, float]]) -> dict[str, list[float]]:
    """Latencies (s) with no overheads: one central FCFS queue vs round-robin to per-instance queues."""
    free = [0.0] * INSTANCES  # a heap of times the instances become free
    central = []
    for arrival, service_ms in jobs:
        start = max(arrival, heapq.heappop(free))
        heapq.heappush(free, start + service_ms / 1000)
        central.append(start + service_ms / 1000 - arrival)
    busy_until = [0.0] * INSTANCES
    rr = []
    for i, (arrival, service_ms) in enumerate(jobs):
        k = i % INSTANCES
        busy_until[k] = max(arrival, busy_until[k]) + service_ms / 1000
        rr.append(busy_until[k] - arrival)
    return {"central": central, "round_robin": rr}


def percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": statistics.median(samples), "p90": q[89], "p99": q[98]}


async def replay(url: str, jobs: list[tuple[float, float]]) -> tuple[list[float], dict[str, int]]:
    """Send each job at its arrival time; latency from the scheduled arrival to the last byte."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05

        async def one(arrival: float, service_ms: float) -> None:
            async with session.post(url, json={"service_ms": service_ms}) as response:
                await response.read()
                if response.status != 200:
                    failures[str(response.status)] = failures.get(str(response.status), 0) + 1
                    return
            latencies.append(loop.time() - (start + arrival))

        tasks = []
        for arrival, service_ms in jobs:
            delay = start + arrival - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(arrival, service_ms)))
        await asyncio.gather(*tasks)
    return latencies, failures


def wait_ready(server: Server, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = server.http.get("/api/v1/instances", params={"function": name}).json()
        if sum(1 for r in rows if r.get("state") == "ready") >= INSTANCES:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not get {INSTANCES} ready instances in {timeout_s}s")


def row(label: str, values: list[float]) -> str:
    return (f"  {label:<58} {statistics.median(values) * 1000:>8.1f} {min(values) * 1000:>8.1f} "
            f"{max(values) * 1000:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="per policy per round")
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    population = service_times_ms()
    print(f"{len(population)} service times, mean {statistics.mean(population):.1f} ms, "
          f"median {statistics.median(population):.0f} ms ({ATTRIBUTION})")
    rate = args.load * INSTANCES / (statistics.mean(population) / 1000)
    print(f"{INSTANCES} instances, one request at a time each; Poisson arrivals at {rate:.1f} req/s "
          f"({args.load:.0%} load); {args.rounds} rounds x {args.requests} requests per policy\n")

    measured: dict[str, list[dict[str, float]]] = {label: [] for label in POLICIES}
    pooled: dict[str, list[float]] = {label: [] for label in POLICIES}
    simulated: list[dict[str, dict[str, float]]] = []
    server = Server()
    try:
        for overrides in POLICIES.values():
            server.deploy(FUNCTION, **overrides)
        for overrides in POLICIES.values():
            wait_ready(server, str(overrides["name"]))
        for i in range(args.rounds):
            jobs = workload(population, args.requests, args.load, seed=args.seed + i)
            sim = simulate(jobs)
            simulated.append({k: percentiles(v) for k, v in sim.items()})
            labels = list(POLICIES) if i % 2 == 0 else list(reversed(POLICIES))
            for label in labels:
                url = f"{server.url}/fn/{POLICIES[label]['name']}/invoke"
                latencies, failures = asyncio.run(replay(url, jobs))
                if failures:
                    raise RuntimeError(f"{label}: non-200 answers {failures}")
                stats = percentiles(latencies)
                measured[label].append(stats)
                pooled[label] += latencies
                print(f"round {i + 1}/{args.rounds}  {label:<52} p50 {stats['p50'] * 1000:6.1f}  "
                      f"p90 {stats['p90'] * 1000:6.1f}  p99 {stats['p99'] * 1000:6.1f} ms", flush=True)
    finally:
        server.close()

    print(f"\n  {'latency over rounds (ms)':<58} {'median':>8} {'min':>8} {'max':>8}")
    for label in POLICIES:
        for q in ("p50", "p90", "p99"):
            print(row(f"{label.split(' (')[0]}: {q}", [r[q] for r in measured[label]]))
    default, rr = list(POLICIES)
    ratios = {q: statistics.median(r[q] for r in measured[default])
              / statistics.median(r[q] for r in measured[rr]) for q in ("p50", "p90", "p99")}
    pooled_stats = {label: percentiles(pooled[label]) for label in POLICIES}
    pooled_ratios = {q: pooled_stats[default][q] / pooled_stats[rr][q] for q in ("p50", "p90", "p99")}
    sim_ratios = {q: statistics.median(s["central"][q] / s["round_robin"][q] for s in simulated)
                  for q in ("p50", "p90", "p99")}
    print("\n  torpor default / conventional round-robin   measured (median of rounds)  "
          "all requests pooled   simulated")
    for q in ("p50", "p90", "p99"):
        print(f"    {q}:{'':<38}{ratios[q]:>6.2f}{'':<24}{pooled_ratios[q]:>6.2f}{'':<14}"
              f"{sim_ratios[q]:>6.2f}")
    goals = {f"p99 ratio {ratios['p99']:.2f} <= 0.75": ratios["p99"] <= GOALS["p99"],
             f"p90 ratio {ratios['p90']:.2f} <= 0.85": ratios["p90"] <= GOALS["p90"]}
    print("\n  goals (BENCHMARKS.md):")
    for text, met in goals.items():
        print(f"    [{'met' if met else 'MISSED'}] {text}")
    path = write_json("scheduling", {
        "config": vars(args), "rate_per_s": rate, "attribution": ATTRIBUTION,
        "rounds": measured, "pooled": pooled_stats, "ratios": ratios, "pooled_ratios": pooled_ratios,
        "simulated": simulated, "simulated_ratios": sim_ratios, "goals": goals})
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
