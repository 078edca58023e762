"""Bills as sums over ledger intervals: pure, exact, and unable to count a second twice.

Every instance state interval lands in the append-only ledger (DESIGN.md, Metering). A bill is the
sum, per function, of those intervals clipped to a window ``[since, until)``, priced with a
:class:`~torpor.metering.prices.PriceTable`. Seed 000's idle mode is the model: a provisioned instance
whose windows T0..T4 alternate idle and active costs ``(T0 + T2 + T4) × idle price + (T1 + T3) × active
price``. Next to the cost each line shows what always-on hardware would have cost (seed 001), over
the part of the window in which the function existed (``lifetimes``), never before it was deployed.

Arithmetic is :class:`~decimal.Decimal` throughout, with times taken at their shortest decimal form
(``repr``) to the microsecond, so seed 001's ``3,600 × 4 × 0.000018`` is exactly ``0.2592`` and cutting
an interval in two never changes a per-second bill. ``active_seconds`` and friends are
instance-seconds: two instances ready for one second are two seconds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any, Literal

from torpor.metering.prices import MB_PER_GB, PriceTable
from torpor.states import InstanceState

Usage = Literal["active", "idle"]

ACTIVE_STATES = frozenset(
    {InstanceState.STARTING, InstanceState.READY, InstanceState.BUSY, InstanceState.DRAINING}
)
IDLE_STATES = frozenset({InstanceState.FROZEN})
BILLED_STATES = ACTIVE_STATES | IDLE_STATES

_DIGITS = 100  # enough that no product of a price, a size and a duration is ever rounded
_ZERO = Decimal(0)
_MICROSECOND = Decimal("1e-6")
_MINUTE_S = Decimal(60)
_HOUR_S = Decimal(3600)
_ALWAYS_ON_PLACES = Decimal("1e-10")  # always-on cost divides by 3600: the one inexact step
_PCT_PLACES = Decimal("0.01")


def exact_seconds(t: float) -> Decimal:
    """``t`` as the decimal it was written as (0.1 is 0.1, not 0.1000000000000000055…), to the µs.

    The ledger's resolution is a microsecond, which keeps every product exact in ``_DIGITS`` digits.
    """
    return Decimal(repr(t)).quantize(_MICROSECOND, rounding=ROUND_HALF_EVEN)


def classify(state: InstanceState | str) -> Usage:
    """Frozen instances are idle; starting, ready, busy and draining ones hold live resources."""
    state = InstanceState(state)
    if state in IDLE_STATES:
        return "idle"
    if state in ACTIVE_STATES:
        return "active"
    raise ValueError(f"{state.value!r} is not a billed state; an instance that is gone costs nothing")


_USAGE: dict[InstanceState, Usage] = {state: classify(state) for state in BILLED_STATES}
_NAME = {state: state.value for state in InstanceState}  # (an enum's .value is a slow descriptor)


@dataclass(frozen=True)
class InstanceInfo:
    """What the ledger records about an instance besides its state; fixed for its lifetime."""

    instance_id: str
    function: str
    revision: str
    pool: str
    device: str  # "cpu", or the GPU it runs on ("cuda:0")
    gpu_memory_mb: int
    cpus: float
    memory_mb: int
    node: str = "local"


@dataclass(frozen=True)
class LedgerInterval:
    """One instance in one state over ``[start, end)`` (epoch seconds); ``end`` None while still open."""

    instance_id: str
    function: str
    revision: str
    pool: str
    device: str
    gpu_memory_mb: int
    cpus: float
    memory_mb: int
    state: InstanceState
    start: float
    end: float | None = None
    node: str = "local"

    def __post_init__(self) -> None:
        if type(self.state) is not InstanceState:  # e.g. "ready", read back from the store
            object.__setattr__(self, "state", InstanceState(self.state))
        if self.state not in BILLED_STATES:
            classify(self.state)  # only billed states may enter the ledger: raises, naming it
        if not math.isfinite(self.start) or (self.end is not None and not math.isfinite(self.end)):
            raise ValueError(f"interval of {self.instance_id}: start and end must be finite")
        if self.end is not None and self.end < self.start:
            raise ValueError(
                f"interval of {self.instance_id} ends ({self.end}) before it starts ({self.start})"
            )
        if min(self.gpu_memory_mb, self.cpus, self.memory_mb) < 0:
            raise ValueError(f"interval of {self.instance_id}: resources cannot be negative")

    @classmethod
    def of(cls, info: InstanceInfo, state: InstanceState, start: float, end: float | None) -> LedgerInterval:
        return cls(**asdict(info), state=state, start=start, end=end)


@dataclass(frozen=True)
class BillLine:
    """One function's usage and cost in a window. Seconds are billed seconds (after rounding)."""

    function: str
    state_seconds: dict[str, Decimal]  # raw instance-seconds per state, before any rounding
    active_seconds: Decimal
    idle_seconds: Decimal
    gpu_gb_seconds_active: Decimal
    gpu_gb_seconds_idle: Decimal
    vcpu_seconds_active: Decimal
    vcpu_seconds_idle: Decimal
    memory_gb_seconds_active: Decimal
    memory_gb_seconds_idle: Decimal
    gpu_cost: Decimal
    cpu_cost: Decimal
    memory_cost: Decimal
    peak_instances: int  # most instances alive at once; GPU instances only for a GPU function
    always_on_cost: Decimal
    vcpu_seconds: Decimal  # active + idle, and so on below: summed here, at full precision
    memory_gb_seconds: Decimal
    cost: Decimal  # gpu_cost + cpu_cost + memory_cost
    saving: Decimal  # always_on_cost - cost
    saving_pct: Decimal | None  # saving / always_on_cost × 100, to 0.01; None when always-on is free
    always_on_seconds: Decimal = _ZERO  # the part of the window the always-on fleet covers
    # what always-on means for this line: "gpu" (a dedicated GPU server per GPU instance at
    # always_on_gpu_per_hour) or "cpu" (the peak instances kept active at the CPU and memory prices)
    always_on_basis: str = "cpu"


@dataclass(frozen=True)
class Bill:
    """Per-function lines for ``[since, until)``, sorted by function name, with totals."""

    since: float
    until: float
    currency: str
    rounding: str
    lines: tuple[BillLine, ...]
    cost: Decimal
    always_on_cost: Decimal
    saving: Decimal
    saving_pct: Decimal | None

    def line(self, function: str) -> BillLine:
        for line in self.lines:
            if line.function == function:
                return line
        raise KeyError(f"no usage for function {function!r} in this bill")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping; amounts are decimal strings so no float rounding creeps in."""
        return _json(self)


def bill(
    intervals: Iterable[LedgerInterval],
    prices: PriceTable,
    since: float,
    until: float,
    function: str | None = None,
    lifetimes: Mapping[str, tuple[float, float | None]] | None = None,
) -> Bill:
    """Price the part of each interval inside ``[since, until)``; open intervals run to ``until``.

    ``function`` keeps only that function's intervals. With ``rounding: minute`` each instance's active
    and idle seconds inside the window are rounded up to whole minutes, once per bill.
    ``lifetimes`` (function → deployed at, deleted at or None) limits each always-on comparison to
    the time the function existed; a function missing from it is taken to exist from its first
    interval to its last one (to ``until`` while one is open). Without it, the whole window counts.
    """
    if until < since:
        raise ValueError(f"until ({until}) is before since ({since})")
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        lo, hi = exact_seconds(since), exact_seconds(until)
        by_function: dict[str, list[_Clipped]] = defaultdict(list)
        exact = _ExactSeconds()  # an interval's end is mostly the start of the instance's next one
        for interval in intervals:
            if function is not None and interval.function != function:
                continue
            end = hi if interval.end is None else min(exact(interval.end), hi)
            start = max(exact(interval.start), lo)
            if end > start:
                by_function[interval.function].append(_Clipped(interval, start, end))
        spans = {name: _existed(name, lifetimes, parts, lo, hi) if lifetimes is not None else hi - lo
                 for name, parts in by_function.items()}
        lines = tuple(
            _price_line(name, clipped, prices, spans[name])
            for name, clipped in sorted(by_function.items())
        )
        cost = sum((line.cost for line in lines), _ZERO)
        always_on = sum((line.always_on_cost for line in lines), _ZERO)
        return Bill(
            since,
            until,
            prices.currency,
            prices.rounding,
            lines,
            cost=cost,
            always_on_cost=always_on,
            saving=always_on - cost,
            saving_pct=_pct(always_on - cost, always_on),
        )


def _existed(name: str, lifetimes: Mapping[str, tuple[float, float | None]],
             clipped: list[_Clipped], lo: Decimal, hi: Decimal) -> Decimal:
    """Seconds of ``[lo, hi)`` in which the function existed."""
    if name in lifetimes:
        born_at, gone_at = lifetimes[name]
        born = exact_seconds(born_at)
        gone = hi if gone_at is None else exact_seconds(gone_at)
    else:
        born = min(exact_seconds(part.interval.start) for part in clipped)
        ends = [part.interval.end for part in clipped]
        gone = hi if None in ends else max(exact_seconds(end) for end in ends if end is not None)
    return max(min(gone, hi) - max(born, lo), _ZERO)


def intervals_from_timeline(
    events: Iterable[tuple[float, InstanceInfo, InstanceState]], now: float | None
) -> list[LedgerInterval]:
    """Turn state changes ``(time, instance, new state)`` into ledger intervals, sorted by start.

    Each change closes the instance's open interval and opens one in the new state; STOPPED or FAILED
    only close it. Instances still live end at ``now`` (``None`` leaves them open, as the ledger does).
    """
    live: dict[str, tuple[InstanceInfo, InstanceState, float]] = {}
    out: list[LedgerInterval] = []
    for at, info, new_state in sorted(events, key=lambda event: event[0]):  # stable for equal times
        if now is not None and at > now:
            raise ValueError(f"state change at t={at} is after now ({now})")
        state = InstanceState(new_state)
        current = live.pop(info.instance_id, None)
        if current is not None and current[:2] == (info, state):
            live[info.instance_id] = current  # no change: the interval goes on
            continue
        if current is not None and at > current[2]:
            out.append(LedgerInterval.of(current[0], current[1], current[2], at))
        if state in BILLED_STATES:
            live[info.instance_id] = (info, state, at)
    for info, state, start in live.values():
        if now is None or now > start:
            out.append(LedgerInterval.of(info, state, start, now))
    return sorted(out, key=lambda interval: (interval.start, interval.instance_id))


class _ExactSeconds(dict[float, Decimal]):
    """:func:`exact_seconds`, each time worked out once (0.0 and -0.0 apart: their decimals differ)."""

    def __call__(self, t: float) -> Decimal:
        exact = self.get(t)
        if exact is None or t == 0:
            exact = self[t] = exact_seconds(t)
        return exact


class _Clipped:
    """The part of an interval inside the bill's window."""

    __slots__ = ("end", "interval", "seconds", "start")

    def __init__(self, interval: LedgerInterval, start: Decimal, end: Decimal) -> None:
        self.interval = interval
        self.start = start
        self.end = end
        self.seconds = end - start


@dataclass
class _Meter:
    seconds: Decimal = _ZERO
    gpu_gb_s: Decimal = _ZERO
    vcpu_s: Decimal = _ZERO
    memory_gb_s: Decimal = _ZERO

    def add(self, interval: LedgerInterval, seconds: Decimal) -> None:
        self.seconds += seconds
        self.gpu_gb_s += seconds * interval.gpu_memory_mb / MB_PER_GB  # 4096 MB × 1 s / 1024 = 4 GB-s
        self.vcpu_s += seconds * Decimal(repr(interval.cpus))
        self.memory_gb_s += seconds * interval.memory_mb / MB_PER_GB


def _price_line(name: str, clipped: list[_Clipped], prices: PriceTable, window_s: Decimal) -> BillLine:
    meters: dict[Usage, _Meter] = {"active": _Meter(), "idle": _Meter()}
    state_seconds: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    per_instance: dict[tuple[str, Usage], list[_Clipped]] = defaultdict(list)
    by_minute = prices.rounding == "minute"
    for part in clipped:
        state = part.interval.state
        state_seconds[_NAME[state]] += part.seconds
        usage = _USAGE.get(state) or classify(state)
        if by_minute:
            per_instance[(part.interval.instance_id, usage)].append(part)
        else:  # (sums of decimals this precise are exact: the order of the parts does not matter)
            meters[usage].add(part.interval, part.seconds)
    for (_, usage), parts in per_instance.items():
        for part in parts:
            meters[usage].add(part.interval, part.seconds)
        raw = sum((part.seconds for part in parts), _ZERO)
        # 61 s → ceil(61 / 60) × 60 = 120 s, charged at the last shape
        padding = (raw / _MINUTE_S).to_integral_value(rounding=ROUND_CEILING) * _MINUTE_S - raw
        meters[usage].add(max(parts, key=lambda part: part.end).interval, padding)
    active, idle = meters["active"], meters["idle"]
    peak, always_on = _always_on(clipped, prices, window_s)
    on_gpu = any(part.interval.gpu_memory_mb > 0 for part in clipped)
    gpu_cost = active.gpu_gb_s * prices.gpu_active_per_gb_s + idle.gpu_gb_s * prices.gpu_idle_per_gb_s
    cpu_cost = active.vcpu_s * prices.cpu_per_vcpu_s + idle.vcpu_s * prices.cpu_idle_per_vcpu_s
    memory_cost = active.memory_gb_s * prices.memory_per_gb_s + idle.memory_gb_s * prices.memory_idle_per_gb_s
    cost = gpu_cost + cpu_cost + memory_cost  # seed 000: (T0 + T2 + T4) × idle + (T1 + T3) × active
    return BillLine(
        function=name,
        state_seconds=dict(state_seconds),
        active_seconds=active.seconds,
        idle_seconds=idle.seconds,
        gpu_gb_seconds_active=active.gpu_gb_s,
        gpu_gb_seconds_idle=idle.gpu_gb_s,
        vcpu_seconds_active=active.vcpu_s,
        vcpu_seconds_idle=idle.vcpu_s,
        memory_gb_seconds_active=active.memory_gb_s,
        memory_gb_seconds_idle=idle.memory_gb_s,
        gpu_cost=gpu_cost,
        cpu_cost=cpu_cost,
        memory_cost=memory_cost,
        peak_instances=peak,
        always_on_cost=always_on,
        vcpu_seconds=active.vcpu_s + idle.vcpu_s,
        memory_gb_seconds=active.memory_gb_s + idle.memory_gb_s,
        cost=cost,
        saving=always_on - cost,
        saving_pct=_pct(always_on - cost, always_on),
        always_on_seconds=window_s,
        always_on_basis="gpu" if on_gpu else "cpu",
    )


def _always_on(clipped: list[_Clipped], prices: PriceTable, window_s: Decimal) -> tuple[int, Decimal]:
    """The same peak fleet kept on for the whole window, frozen or not (seed 001's comparison).

    A GPU function needs one dedicated GPU server per GPU instance it ever ran at once, whatever slice
    of the card each used (seed 001 sets a 4 GB instance against a whole T4): peak × hours × price
    (1 × 24 × 2 = 48 a day). A CPU-only function keeps its peak instances at their largest shape,
    always active, at the table's own CPU and memory prices.
    """
    gpu = [part for part in clipped if part.interval.gpu_memory_mb > 0]
    if gpu:
        peak = _peak(gpu)
        cost = peak * window_s * prices.always_on_gpu_per_hour / _HOUR_S
        return peak, cost.quantize(_ALWAYS_ON_PLACES, rounding=ROUND_HALF_EVEN)
    peak = _peak(clipped)
    vcpus = Decimal(repr(max(part.interval.cpus for part in clipped)))
    memory_gb = Decimal(max(part.interval.memory_mb for part in clipped)) / MB_PER_GB
    per_second = vcpus * prices.cpu_per_vcpu_s + memory_gb * prices.memory_per_gb_s
    return peak, peak * window_s * per_second


def _peak(clipped: list[_Clipped]) -> int:
    """Most intervals open at once; half-open, so an end and a start at the same time do not overlap.

    An instance's next interval mostly starts where its last one ended: [a, b) and [b, c) are open
    at exactly the moments [a, c) is, so each such run is counted as one (fewer edges to sort)."""
    runs: dict[str, list[Decimal]] = {}  # instance → [start, end) of its current run
    edges: list[tuple[Decimal, int]] = []
    for part in clipped:
        instance_id = part.interval.instance_id
        run = runs.get(instance_id)
        if run is not None and run[1] == part.start:
            run[1] = part.end
            continue
        if run is not None:
            edges += ((run[0], 1), (run[1], -1))
        runs[instance_id] = [part.start, part.end]
    for start, end in runs.values():
        edges += ((start, 1), (end, -1))
    edges.sort()
    open_now = peak = 0
    for _, step in edges:  # (t, -1) sorts before (t, +1)
        open_now += step
        peak = max(peak, open_now)
    return peak


def _pct(saving: Decimal, always_on: Decimal) -> Decimal | None:
    if always_on == 0:
        return None
    return (saving * 100 / always_on).quantize(_PCT_PLACES, rounding=ROUND_HALF_EVEN)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _json(record: Bill | BillLine) -> dict[str, Any]:
    """Fields keep their unit-carrying names (``active_seconds``, ``gpu_gb_seconds_active``, ``cost``
    in the bill's currency); amounts are decimal text."""
    out: dict[str, Any] = {}
    for item in fields(record):
        value = getattr(record, item.name)
        if isinstance(value, Decimal):
            value = _text(value)
        elif isinstance(value, dict):
            value = {key: _text(amount) for key, amount in sorted(value.items())}
        elif isinstance(value, tuple):
            value = [_json(line) for line in value]
        name = {"since": "since_epoch_s", "until": "until_epoch_s", "lines": "functions"}.get(
            item.name, item.name)
        out[name] = value
    return out
