"""Run a trace through the simulator, what-ifs side by side, and bill the result as ``torpor bill`` does.

Every function of the trace gets the same spec (its name aside); functions never share instances in
torpor, so each is replayed alone (in worker processes when there are many) and their ledgers are
priced together with :func:`torpor.metering.billing.bill` over one window, ``[0, end)``: the end of the
longest replay, or ``duration_s`` when given.
"""

from __future__ import annotations

import itertools
import json
import os
from array import array
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from torpor.autoscaling.scaling_policies import ProvisionConfig, parse_provision_config
from torpor.errors import SpecError
from torpor.metering.billing import Bill, BillLine, bill
from torpor.metering.prices import PriceTable, format_errors
from torpor.sim.engine import FunctionResult, FunctionSim, Timings, collector_paused
from torpor.sim.traces import FunctionTrace, Trace
from torpor.spec import SPEC_FILENAME, FunctionSpec

PARALLEL_MIN_REQUESTS = 200_000  # below this, starting worker processes costs more than it saves


@dataclass
class RunResult:
    """One what-if: its overrides, the functions' results and the bill over the common window."""

    label: str
    overrides: dict[str, Any]
    functions: list[FunctionResult]
    bill: Bill
    duration_s: float
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    _ordered: list[float] | None = field(default=None, repr=False, compare=False)  # sorted once

    def count(self, name: str) -> int:
        return sum(int(getattr(f, name)) for f in self.functions)

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of answered requests' latencies (``q`` in 0..100)."""
        if not self.latencies_s:
            return None
        ordered = self._sorted()
        rank = max(1, -(-len(ordered) * q // 100))  # ceil(n × q / 100), at least the first
        return ordered[int(rank) - 1]

    def _sorted(self) -> list[float]:
        if self._ordered is None:
            self._ordered = sorted(self.latencies_s)
        return self._ordered

    def state_seconds(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for line in self.bill.lines:
            for state, seconds in line.state_seconds.items():
                totals[state] = totals.get(state, Decimal(0)) + seconds
        return dict(sorted(totals.items()))

    def instance_seconds(self) -> Decimal:
        """All instances' seconds in every billed state (starting, ready, busy, frozen, draining)."""
        return sum(self.state_seconds().values(), Decimal(0))

    def to_json(self) -> dict[str, Any]:
        requests = self.count("requests")
        cold = self.count("cold_start_requests")
        return {
            "run": self.label,
            "overrides": self.overrides,
            "functions": len(self.functions),
            "duration_s": round(self.duration_s, 6),
            "requests": requests,
            "answered": self.count("answered"),
            "queued": self.count("queued"),
            "rejected": self.count("rejected"),
            "timed_out": self.count("timed_out"),
            "latency_s": {f"p{q}": _round(self.percentile(q)) for q in (50, 90, 99)},
            "cold_starts": self.count("cold_starts"),
            "cold_start_requests": cold,
            "cold_start_rate": round(cold / requests, 6) if requests else 0.0,
            "thaws": self.count("thaws"),
            "thawed_requests": self.count("thawed_requests"),
            "instance_seconds": _text(self.instance_seconds()),
            "state_seconds": {k: _text(v) for k, v in self.state_seconds().items()},
            "active_seconds": _text(sum((ln.active_seconds for ln in self.bill.lines), Decimal(0))),
            "idle_seconds": _text(sum((ln.idle_seconds for ln in self.bill.lines), Decimal(0))),
            "cost": _text(self.bill.cost),
            "always_on_cost": _text(self.bill.always_on_cost),
            "saving_pct": _text(self.bill.saving_pct),
            "currency": self.bill.currency,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


# specs and overrides ---------------------------------------------------------------------------


def parse_assignment(text: str, flag: str) -> tuple[str, list[Any]]:
    """``scaling.provisioned=0,1`` → (``scaling.provisioned``, [0, 1]); values read as YAML scalars."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(flag, [f"{text!r}: expected key=value, e.g. scaling.provisioned=1"])
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the spec mapping with dotted keys set: ``{"scaling.idle_mode": True}``."""
    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy of plain data
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError("--set", [f"{dotted}: {part} is not a section of the spec"])
            node = child
        node[leaf] = value
    return out


def validate_spec(raw: dict[str, Any], source: str) -> FunctionSpec:
    """The spec's fields validated as a deploy validates them (the handler's files are not needed)."""
    try:
        return FunctionSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc)) from None


def load_raw_spec(path: Path) -> tuple[dict[str, Any], str]:
    spec_file = path / SPEC_FILENAME if path.is_dir() else path
    try:
        raw = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(str(spec_file), ["file not found"]) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SpecError(str(spec_file), [f"cannot read the spec: {exc}"]) from None
    if not isinstance(raw, dict):
        raise SpecError(str(spec_file), ["(top level): must be a mapping of fields"])
    return raw, str(spec_file)


def what_ifs(compare: Sequence[str], raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of ``--compare`` axes. An axis of one value also runs the spec's own
    value, so ``--compare scaling.provisioned=2`` compares the spec against provisioned 2."""
    axes: list[list[tuple[str, Any]]] = []
    for text in compare:
        key, values = parse_assignment(text, "--compare")
        if len(values) == 1:
            current = _lookup(raw, key)
            values = [current, *values] if current != values[0] else values
        axes.append([(key, value) for value in values])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:  # not set in the spec: the spec model's default
        node = FunctionSpec.model_validate({"name": "x", "runtime": {"command": ["x"]}})
        for part in dotted.split("."):
            node = getattr(node, part, None)
    return node


def load_timings(path: Path, base: Timings) -> Timings:
    """Timings measured by torpor: a JSON object with :class:`Timings` fields (e.g. from a bench), or
    a saved ``/metrics`` page, whose cold-start histogram gives the mean start → ready time."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read timings: {exc.strerror or exc}"]) from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SpecError(str(path), [f"not valid JSON: {exc}"]) from None
        unknown = sorted(set(data) - set(asdict(base)))
        if unknown:
            raise SpecError(str(path), [f"{k}: unknown timing; valid: {', '.join(asdict(base))}"
                                        for k in unknown])
        return replace(base, **{k: float(v) for k, v in data.items()})
    sums = counts = 0.0
    for line in text.splitlines():
        if line.startswith("torpor_cold_start_seconds_") and 'phase="total"' in line:
            name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
            if name.endswith("_sum"):
                sums += value
            elif name.endswith("_count"):
                counts += value
    if not counts:
        raise SpecError(str(path), ["no torpor_cold_start_seconds{phase=\"total\"} samples in it"])
    return replace(base, cold_start_s=sums / counts)


def load_provision(path: Path) -> ProvisionConfig:
    """A provisioning config as ``torpor provision --policies`` takes it (FC's provision.json or
    torpor's YAML/JSON shape)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SpecError(str(path), [f"cannot read the provisioning config: {exc}"]) from None
    return parse_provision_config(data, str(path))


# running ---------------------------------------------------------------------------------------


_Job = tuple[str, FunctionSpec, FunctionTrace, Timings, float | None, int, bool, PriceTable,
             ProvisionConfig | None]


def _replay(job: _Job) -> tuple[FunctionResult, BillLine | None]:
    """Replay one function; with a known end, bill it here too (in the worker, in parallel)."""
    name, spec, trace, timings, end_s, seed, timeline, prices, provision = job
    with collector_paused():  # through the bill too: the ledger it reads is kept till then
        result = FunctionSim(name, spec, trace, timings, end_s=end_s, seed=seed, timeline=timeline,
                             provision=provision).run()
        if end_s is None:
            return result, None
        line = bill_function(result, prices, end_s)
        result.intervals = []  # billed: no need to send them back
        return result, line


def bill_function(result: FunctionResult, prices: PriceTable, end_s: float) -> BillLine | None:
    """The function's bill line over ``[0, end_s)``, from its ledger, by :func:`bill`."""
    lines = bill(result.intervals, prices, 0.0, end_s).lines
    return lines[0] if lines else None


def combine(lines: Sequence[BillLine], prices: PriceTable, end_s: float) -> Bill:
    """One bill from per-function lines: totals are sums of lines, as in :func:`bill` (a function's
    line depends only on its own intervals and the window)."""
    empty = bill([], prices, 0.0, end_s)
    ordered = tuple(sorted(lines, key=lambda line: line.function))
    cost = sum((line.cost for line in ordered), Decimal(0))
    always_on = sum((line.always_on_cost for line in ordered), Decimal(0))
    pct = None if always_on == 0 else ((always_on - cost) * 100 / always_on).quantize(Decimal("0.01"))
    return replace(empty, lines=ordered, cost=cost, always_on_cost=always_on,
                   saving=always_on - cost, saving_pct=pct)


def simulate(trace: Trace, spec: FunctionSpec, *, timings: Timings, prices: PriceTable,
             label: str = "spec", overrides: dict[str, Any] | None = None,
             duration_s: float | None = None, seed: int = 0, timeline: bool = False,
             workers: int | None = None, provision: ProvisionConfig | None = None) -> RunResult:
    """Replay every function of ``trace`` with ``spec`` and bill the ledger over ``[0, end)``.

    ``provision`` replaces ``scaling.provisioned`` as a config set with ``torpor provision`` does.
    An int ``duration_s`` bills as its float (3600 → 3600.0), as a compiled build stores it.
    """
    duration_s = None if duration_s is None else float(duration_s)
    jobs = [(name, spec, fn, timings, duration_s, seed + n, timeline, prices, provision)
            for n, (name, fn) in enumerate(sorted(trace.functions.items()))]
    workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1 and trace.requests >= PARALLEL_MIN_REQUESTS:
        with ProcessPoolExecutor(workers) as pool:
            # small chunks: the last one decides when the pool is done (100 day-long functions: 1 each)
            results = list(pool.map(_replay, jobs, chunksize=max(1, len(jobs) // (workers * 32))))
    else:
        results = [_replay(job) for job in jobs]
    end = duration_s if duration_s is not None else max((r.end_s for r, _ in results), default=0.0)
    lines = [line if duration_s is not None else bill_function(r, prices, end) for r, line in results]
    latencies: array[float] = array("d")
    for r, _ in results:
        latencies.extend(r.latencies_s)
    bill_ = combine([line for line in lines if line is not None], prices, end)
    return RunResult(label, overrides or {}, [r for r, _ in results], bill_, end, latencies)


def run_all(trace: Trace, raw: dict[str, Any], source: str, *, sets: Sequence[str] = (),
            compare: Sequence[str] = (), timings: Timings, prices: PriceTable,
            duration_s: float | None = None, seed: int = 0, timeline: bool = False,
            workers: int | None = None, provision: ProvisionConfig | None = None) -> list[RunResult]:
    """The spec with ``--set`` applied, once per ``--compare`` combination."""
    base: dict[str, Any] = {}
    for text in sets:
        key, values = parse_assignment(text, "--set")
        if len(values) != 1:
            raise SpecError("--set", [f"{text!r}: one value per --set (use --compare for several)"])
        base[key] = values[0]
    raw = apply_overrides(raw, base)
    runs = []
    for variant in what_ifs(compare, raw):
        spec = validate_spec(apply_overrides(raw, variant), source)
        label = ", ".join(f"{k}={_show(v)}" for k, v in variant.items()) or "spec"
        runs.append(simulate(trace, spec, timings=timings, prices=prices, label=label,
                             overrides={**base, **variant}, duration_s=duration_s, seed=seed,
                             timeline=timeline, workers=workers, provision=provision))
    return runs


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
