"""What ``torpor simulate`` prints: one column per what-if, and a PNG of load, instances and latency."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from torpor.errors import TorporError
from torpor.sim.engine import Timings
from torpor.sim.runner import RunResult
from torpor.sim.traces import Trace

_ROWS: tuple[tuple[str, str], ...] = (
    ("requests", "requests"),
    ("answered", "answered"),
    ("queued", "queued (waited for an instance)"),
    ("rejected", "rejected (queue full, 503)"),
    ("timed_out", "timed out (504)"),
    ("latency_s.p50", "latency p50 s"),
    ("latency_s.p90", "latency p90 s"),
    ("latency_s.p99", "latency p99 s"),
    ("cold_starts", "cold starts (instances started)"),
    ("cold_start_rate", "requests that waited for a cold start"),
    ("thawed_requests", "requests that waited for a thaw"),
    ("instance_seconds", "instance-seconds"),
    ("state_seconds", "  by state"),
    ("cost", "cost"),
    ("always_on_cost", "always-on cost"),
    ("saving_pct", "saving %"),
)


def _cell(data: dict[str, Any], key: str) -> str:
    value: Any = data
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if key == "state_seconds" and isinstance(value, dict):
        return " ".join(f"{state} {float(seconds):.0f}" for state, seconds in value.items()) or "-"
    if key == "cold_start_rate" and isinstance(value, float):
        return f"{value * 100:.2f} %"
    if isinstance(value, float):
        return f"{value:.3f}"
    if key == "instance_seconds" and value is not None:
        return f"{float(value):.1f}"
    if key in ("cost", "always_on_cost") and value is not None:
        return f"{float(value):.4f} {data['currency']}"
    return "-" if value is None else str(value)


def print_table(out: Console, runs: Sequence[RunResult], trace: Trace, timings: Timings) -> None:
    out.print(f"trace {trace.source} ({trace.format}): {trace.requests} requests, "
              f"{len(trace.functions)} function(s), {trace.span_s:.0f} s; {trace.service_model}",
              highlight=False, soft_wrap=True)
    out.print("timings: " + ", ".join(f"{k} {v:g}" for k, v in asdict(timings).items()),
              highlight=False, soft_wrap=True)
    rows = [run.to_json() for run in runs]
    table = Table("", *(row["run"] for row in rows))
    for key, title in _ROWS:
        table.add_row(title, *(_cell(row, key) for row in rows))
    out.print(table)
    out.print(f"billed over [0, {runs[0].duration_s:.0f} s) as `torpor bill` counts it", highlight=False)


def print_json(runs: Sequence[RunResult], trace: Trace, timings: Timings) -> str:
    """One JSON object per run, one per line."""
    lines = []
    for run in runs:
        data = run.to_json()
        data["trace"] = {"source": trace.source, "format": trace.format, "requests": trace.requests,
                         "functions": len(trace.functions), "service_model": trace.service_model}
        data["timings"] = asdict(timings)
        lines.append(json.dumps(data))
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[RunResult], path: Path, bucket_s: float | None = None) -> None:
    """Load, instances by state and latency p90 over time, one line per run, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TorporError("--plot needs matplotlib: pip install 'torpor[plot]'") from None
    duration = max(run.duration_s for run in runs) or 1.0
    bucket = bucket_s or max(1.0, duration / 300)
    fig, (load_ax, inst_ax, lat_ax) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for run in runs:
        ticks = sorted(sample for f in run.functions for sample in f.timeline)
        _series(load_ax, ticks, 1, bucket, run.label + " in system")
        for column, state in ((3, "ready"), (4, "frozen"), (2, "starting")):
            _series(inst_ax, ticks, column, bucket, f"{run.label} {state}")
        latency: dict[int, list[float]] = {}
        for f in run.functions:
            for arrived, seconds in zip(f.arrivals_s, f.latencies_s, strict=True):
                latency.setdefault(int(arrived // bucket), []).append(seconds)
        xs = sorted(latency)
        lat_ax.plot([x * bucket for x in xs],
                    [sorted(latency[x])[int(0.9 * (len(latency[x]) - 1))] for x in xs],
                    label=run.label)
    load_ax.set_ylabel("requests in system")
    inst_ax.set_ylabel("instances")
    lat_ax.set_ylabel("latency p90 (s)")
    lat_ax.set_xlabel("time (s)")
    for ax in (load_ax, inst_ax, lat_ax):
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _series(ax: Any, samples: list[tuple[float, int, int, int, int, int]], column: int, bucket: float,
            label: str) -> None:
    """The mean of a column per time bucket (per function, when the trace has several)."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for sample in samples:
        key = int(sample[0] // bucket)
        sums[key] = sums.get(key, 0.0) + sample[column]
        counts[key] = counts.get(key, 0) + 1
    xs = sorted(sums)
    ax.plot([x * bucket for x in xs], [sums[x] / counts[x] for x in xs], label=label)
