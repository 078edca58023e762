"""The simulator's outputs as digests, to prove a speed-up changed nothing.

    .venv/bin/python -m bench.simulate_fingerprint --out before.json      # on the old code
    .venv/bin/python -m bench.simulate_fingerprint --check before.json    # on the new code

Replays a set of workloads (the speed benchmark's at a small scale, and short resampled traces
through specs that exercise every path of the engine and the autoscaler: panic, scale-down delay,
pod retention, the rps metric, burst capacity 0 and -1, idle mode, the keep-alive policy,
power-of-two routing, queue limits and timeouts, initial and activation scale, provisioning
policies, the timeline) and hashes everything each function's replay produced: the counters, the
latencies and arrivals byte for byte, every ledger interval and timeline sample, and the bill.
``--check`` exits 1 naming each workload whose digest differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from bench.simulate_validation import TRACES
from torpor.autoscaling.scaling_policies import ProvisionConfig
from torpor.metering.prices import PriceTable
from torpor.sim import runner
from torpor.sim.engine import FunctionResult, Timings
from torpor.sim.traces import Trace, load_trace, resample

CONV = TRACES / "azure-llm-inference-2023" / "AzureLLMInferenceTrace_conv.csv"
BASE: dict[str, Any] = {"name": "fn", "runtime": {"command": ["serve"]}, "timeout_s": 600,
                        "scaling": {"max_instances": 100}}
# name -> (overrides of BASE's scaling/other fields, timings, provision, timeline)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "idle": {"scaling.idle_mode": True, "scaling.provisioned": 1, "scaling.idle_after_s": 5.0},
    "idle-2": {"scaling.idle_mode": True, "scaling.provisioned": 2},
    "keepalive": {"scaling.policy": "keepalive"},
    "keepalive-fixed": {"scaling.policy": "keepalive", "scaling.keep_alive_s": 3.0},
    "p2c-conc2": {"routing.policy": "power_of_two", "concurrency": 2},
    "tbc0": {"scaling.target_burst_capacity": 0.0},
    "tbc-1": {"scaling.target_burst_capacity": -1.0},
    "tbc2-conc4": {"scaling.target_burst_capacity": 2.0, "concurrency": 4},
    "delay-retention": {"scaling.scale_down_delay_s": 30.0, "scaling.scale_to_zero_pod_retention_s": 20.0},
    "grace0": {"scaling.scale_to_zero_grace_s": 0.0},
    "rps": {"scaling.metric": "rps", "scaling.target_rps": 1.0},
    "queue-limits": {"queue.max_queued": 2, "queue.timeout_s": 1.0, "timeout_s": 10.0,
                     "scaling.max_instances": 3},
    "min-initial-activation": {"scaling.min_instances": 1, "scaling.initial_instances": 2,
                               "scaling.activation_scale": 2},
    "max2": {"scaling.max_instances": 2},
    "short-window": {"scaling.stable_window_s": 6.0, "scaling.tick_s": 0.5,
                     "scaling.panic_threshold_pct": 110.0},
    "provisioned-3": {"scaling.provisioned": 3},
}
SLOW = Timings(cold_start_s=2.0, thaw_s=0.5, freeze_s=0.1, stop_s=0.2)
PROVISION = {
    "tracking": {"target_tracking": [{"name": "t", "metric": "concurrency", "target": 0.5,
                                      "min_capacity": 0, "max_capacity": 3}]},
    "scheduled": {"scheduled": [
        {"name": "a", "schedule": "at(1970-01-01T00:10:00Z)", "target": 2},
        {"name": "c", "schedule": "cron(0 */20 * * * *)", "target": 1}]},
}


def digest(result: FunctionResult) -> str:
    h = hashlib.sha256()
    counters = {k: v for k, v in ((f.name, getattr(result, f.name)) for f in fields(result))
                if k not in ("latencies_s", "arrivals_s", "intervals", "timeline")}
    h.update(repr(sorted(counters.items())).encode())
    h.update(result.latencies_s.tobytes())
    h.update(result.arrivals_s.tobytes())
    h.update(repr(result.intervals).encode())
    h.update(repr(result.timeline).encode())
    return h.hexdigest()


def run_case(trace: Trace, overrides: dict[str, Any], *, timings: Timings, duration_s: float | None,
             provision: ProvisionConfig | None = None, timeline: bool = False) -> dict[str, Any]:
    spec = runner.validate_spec(runner.apply_overrides(BASE, overrides), "fingerprint spec")
    run = runner.simulate(trace, spec, timings=timings, prices=PriceTable(), duration_s=duration_s,
                          seed=7, timeline=timeline, workers=1, provision=provision)
    h = hashlib.sha256()
    for f in run.functions:
        h.update(digest(f).encode())
    h.update(json.dumps(run.to_json(), sort_keys=True).encode())
    h.update(repr(run.bill).encode())
    return {"digest": h.hexdigest(), "requests": run.count("requests"),
            "cold_starts": run.count("cold_starts"), "p90": run.to_json()["latency_s"]["p90"]}


def cases() -> dict[str, dict[str, Any]]:
    source = load_trace(CONV)
    out: dict[str, dict[str, Any]] = {}
    speed = resample(source, functions=6, rate_per_s=0.5, duration_s=14_400, seed=1)
    out["speed-6x4h"] = run_case(speed, {}, timings=Timings(), duration_s=14_400)
    small = resample(source, functions=2, rate_per_s=0.5, duration_s=3_600, seed=2)
    busy = resample(source, functions=1, rate_per_s=3.0, duration_s=1_800, seed=3)
    for name, overrides in VARIANTS.items():
        for label, trace in (("small", small), ("busy", busy)):
            for tname, timings in (("fast", Timings()), ("slow", SLOW)):
                out[f"{name}/{label}/{tname}"] = run_case(trace, overrides, timings=timings,
                                                          duration_s=None)
    for name, raw in PROVISION.items():
        config = ProvisionConfig.model_validate(raw)
        for overrides in ({}, {"scaling.idle_mode": True}):
            key = f"provision-{name}{'-idle' if overrides else ''}"
            out[key] = run_case(small, overrides, timings=SLOW, duration_s=3_600, provision=config)
    for name in ("default", "idle", "keepalive", "short-window"):
        out[f"timeline-{name}"] = run_case(busy, VARIANTS[name], timings=SLOW, duration_s=None,
                                           timeline=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write the digests here")
    group.add_argument("--check", type=Path, help="compare with digests written before")
    args = parser.parse_args()
    started = time.process_time()
    got = cases()
    print(f"{len(got)} workloads in {time.process_time() - started:.1f} s CPU")
    if args.out:
        args.out.write_text(json.dumps(got, indent=1, sort_keys=True))
        print(f"wrote {args.out}")
        return
    want = json.loads(args.check.read_text())
    differ = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    for key in differ:
        print(f"DIFFERS {key}: before {want.get(key)}, now {got.get(key)}")
    print("identical" if not differ else f"{len(differ)} of {len(want)} workloads differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
