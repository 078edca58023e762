"""Simulation speed: a day of 100 functions at 0.5 requests/s each (about 4.3 million requests).

    .venv/bin/python -m bench.simulate_speed [--functions 100] [--rate 0.5] [--duration-s 86400]
                                             [--workers N] [--policy auto|kpa|keepalive]
                                             [--compiled]

Arrivals are resampled from the Azure LLM inference 2023 conversation trace (inter-arrival gaps
scaled to the rate, so its burstiness is kept; Azure/AzurePublicDataset, CC-BY-4.0; Patel et al.,
"Splitwise", ISCA 2024), service times from its token counts by the default token model. Each
function is replayed with the default spec (concurrency 1, a 2 s tick, the default scaling policy
``auto``, or ``--policy``), billed over the day and summed up (the percentiles too). Prints wall
time, CPU time (this process and its workers) and the time per request, and writes
bench/results/simulate_speed.json. The machine's load average is printed beside them: on a shared
box the wall time is only as good as the cores that were free. So is which build ran: pure Python,
or the compiled simulator (``--compiled``, or ``python -m torpor.sim.compiled run -- -m
bench.simulate_speed``; ``make sim-compiled`` builds it), and why.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

from bench.harness import write_json
from bench.simulate_validation import AZURE_CONV
from torpor.metering.prices import PriceTable
from torpor.sim import compiled, runner
from torpor.sim.engine import Timings
from torpor.sim.traces import load_trace, resample

SPEC = {"name": "fn", "runtime": {"command": ["serve"]}, "timeout_s": 600,
        "scaling": {"max_instances": 100}}


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--functions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--duration-s", type=float, default=86_400)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", choices=("auto", "kpa", "keepalive"), default=None,
                        help="scaling.policy (default: the spec's default, auto)")
    parser.add_argument("--compiled", action="store_true",
                        help="run the compiled simulator (make sim-compiled) when it is fresh")
    args = parser.parse_args()
    build = compiled.running()
    if args.compiled and build["build"] == "pure":  # start again through the launcher
        compiled.relaunch(["-m", "bench.simulate_speed", *(a for a in sys.argv[1:] if a != "--compiled")])
    spec = SPEC if args.policy is None else {
        **SPEC, "scaling": {**SPEC["scaling"], "policy": args.policy}}  # type: ignore[dict-item]
    started, cpu0 = time.perf_counter(), cpu_s()
    trace = resample(load_trace(AZURE_CONV), functions=args.functions, rate_per_s=args.rate,
                     duration_s=args.duration_s, seed=args.seed)
    resampled, cpu1 = time.perf_counter(), cpu_s()
    result = runner.simulate(trace, runner.validate_spec(spec, "speed spec"), timings=Timings(),
                             prices=PriceTable(), duration_s=args.duration_s, workers=args.workers)
    data = result.to_json()  # the percentiles (a sort of every latency) are part of the answer
    done, cpu2 = time.perf_counter(), cpu_s()
    wall, cpu = done - resampled, cpu2 - cpu1
    figures = {
        "requests": data["requests"], "functions": args.functions, "workers": args.workers,
        "policy": args.policy or "auto", "build": build["build"], "build_why": build["why"],
        "cores": os.cpu_count(), "load_average": os.getloadavg(),
        "resample_s": resampled - started, "resample_cpu_s": cpu1 - cpu0,
        "simulate_wall_s": wall, "simulate_cpu_s": cpu,
        "cpu_us_per_request": cpu / data["requests"] * 1e6,
        "latency_s": data["latency_s"], "cold_starts": data["cold_starts"],
        "instance_seconds": data["instance_seconds"], "cost": data["cost"],
        "always_on_cost": data["always_on_cost"],
    }
    print(f"{data['requests']:,} requests, {args.functions} functions × {args.rate:g} req/s × "
          f"{args.duration_s:g} s, {args.workers} worker(s) on {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  build               {build['build']} ({build['why']})")
    print(f"  resample            {resampled - started:8.1f} s")
    print(f"  simulate + bill     {wall:8.1f} s wall, {cpu:8.1f} s CPU "
          f"({cpu / data['requests'] * 1e6:.1f} µs CPU per request)")
    print(f"  latency p50/p90/p99 {data['latency_s']}; cold starts {data['cold_starts']:,}; "
          f"cost {data['cost']} vs always-on {data['always_on_cost']}")
    print(f"wrote {write_json('simulate_speed', figures)}")


if __name__ == "__main__":
    main()
