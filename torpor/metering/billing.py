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
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from functools import reduce
from itertools import chain
from operator import or_, sub
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

    def __reduce__(self) -> tuple[type[LedgerInterval], tuple[Any, ...]]:
        """Pickled as its fields, rebuilt by the constructor: compiled with mypyc (``make
        sim-compiled``), a frozen dataclass's own unpickling sets its fields one by one and is
        refused (FrozenInstanceError), and the simulator's workers send rows and bill lines back."""
        return type(self), tuple(getattr(self, f.name) for f in fields(self))


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

    def __reduce__(self) -> tuple[type[BillLine], tuple[Any, ...]]:  # as LedgerInterval's
        return type(self), tuple(getattr(self, f.name) for f in fields(self))


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

    The arithmetic is the Decimal arithmetic described above; it is carried out in whole
    microseconds (:func:`_micros`) and priced once per meter (see :class:`_Tally`), which gives the
    same decimals, exponents included.
    """
    if until < since:
        raise ValueError(f"until ({until}) is before since ({since})")
    with localcontext() as ctx:
        ctx.prec = _DIGITS
        lo, hi = exact_seconds(since), exact_seconds(until)
        if lifetimes is not None:
            intervals = list(intervals)  # read again for a function missing from lifetimes
        tally = _Tally(intervals, function, since, until, prices.rounding == "minute")
        spans = None if lifetimes is None else _existed(tally.functions, lifetimes, intervals, lo, hi)
        lines = [
            _price_line(name, tally.functions[name], tally, prices, hi - lo if spans is None else spans[name])
            for name in sorted(tally.functions)
        ]
        cost = sum((line.cost for line in lines), _ZERO)
        always_on = sum((line.always_on_cost for line in lines), _ZERO)
        return Bill(
            since,
            until,
            prices.currency,
            prices.rounding,
            tuple(lines),
            cost=cost,
            always_on_cost=always_on,
            saving=always_on - cost,
            saving_pct=_pct(always_on - cost, always_on),
        )


def _existed(names: Iterable[str], lifetimes: Mapping[str, tuple[float, float | None]],
             intervals: Iterable[LedgerInterval], lo: Decimal, hi: Decimal) -> dict[str, Decimal]:
    """Seconds of ``[lo, hi)`` in which each function existed."""
    bounds: dict[str, tuple[Decimal, Decimal]] = {}
    billed: dict[str, list[LedgerInterval]] = {}  # a function missing from lifetimes (rare: deleted)
    for name in names:
        if name in lifetimes:
            born_at, gone_at = lifetimes[name]
            bounds[name] = exact_seconds(born_at), hi if gone_at is None else exact_seconds(gone_at)
        else:
            billed[name] = []
    if billed:  # from its intervals that reach into the window, in one pass for all of them
        for interval in intervals:
            mine = billed.get(interval.function)
            if mine is not None:
                start = max(exact_seconds(interval.start), lo)
                end = hi if interval.end is None else min(exact_seconds(interval.end), hi)
                if end > start:
                    mine.append(interval)
        for name, mine in billed.items():
            ends = [interval.end for interval in mine]
            gone = hi if None in ends else max(exact_seconds(end) for end in ends if end is not None)
            bounds[name] = min(exact_seconds(interval.start) for interval in mine), gone
    return {name: max(min(gone, hi) - max(born, lo), _ZERO) for name, (born, gone) in bounds.items()}


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


def _micros(t: float) -> int:
    """``exact_seconds(t)`` in whole microseconds, i.e. ``round_half_even(D × 10⁶)`` where ``D`` is the
    decimal ``repr(t)`` writes. Three ways, the first that applies:

    1. Float: ``y = t × 10⁶`` as a float and ``n = round(y)`` (an int). Proof that ``n`` is the answer
       when ``|y − n| < 0.5 − 2⁻³⁰ − 2⁻⁴⁰ − |y|·2⁻⁵¹``:
       - ``repr`` round-trips, so ``D`` lies in ``t``'s rounding interval: ``|D − t| ≤ ulp(t)/2 ≤
         |t|·2⁻⁵³`` for a normal ``t`` (at most 2⁻¹⁰⁷⁵ for a subnormal one);
       - the float product rounds to nearest: ``|y − 10⁶t| ≤ |10⁶t|·2⁻⁵³`` (2⁻¹⁰⁷⁵ if it underflows);
       - so ``|10⁶D − y| ≤ 10⁶|t|·2⁻⁵² + 2⁻¹⁰⁵⁰ ≤ |y|·2⁻⁵¹ + 2⁻⁴⁰`` (as ``10⁶|t| ≤ |y|/(1 − 2⁻⁵³)``);
       - ``y − n`` is exact (``n`` is within 0.5 of ``y``: Sterbenz, and ``float(n)`` is exact below
         2⁵³, past which ``y`` is already an integer), the scaling by 2⁻⁵¹ is exact (or underflows
         by less than 2⁻⁴⁰), and the one rounded subtraction of the test errs by at most
         2⁻⁵⁴ < 2⁻³⁰: so a passed test means ``|10⁶D − n| < 0.5``, and ``n`` is the one integer
         that near, whatever the rounding rule.
       It can pass only below ~1.1·10⁹ s (``|y| < 2⁵⁰``): simulated time, not epoch seconds; and a
       time that is a tie or near one (0.0000005) fails it.
    2. Text: round ``repr(t)``'s own digits (``'-12.3456785'`` → -12345678, half-even), which is the
       definition itself. Epoch seconds (~1.7e9: no room for test 1) take this way.
    3. Decimal: :func:`exact_seconds` for ``repr`` in exponent form (|t| ≥ 1e16 or < 1e-4), in the
       caller's context (``bill`` uses 100 digits; it raises there exactly as it did).

    The sign of a zero is not kept (-0.0 → 0): a bill compares and subtracts these integers, and
    works out the one place where a zero's sign shows (a function's lifetime) from the decimals.
    """
    try:
        y = t * 1e6
        n = round(y)
    except OverflowError:  # |t| ≳ 1.8e302
        return _micros_text(t)
    if abs(y - n) < _FLOAT_SAFE - abs(y) * _TWO_M51:
        return n
    return _micros_text(t)


_FLOAT_SAFE = 0.5 - 2.0**-30 - 2.0**-40  # exact in a float (40 bits)
_TWO_M51 = 2.0**-51


def _micros_text(t: float) -> int:
    text = repr(t)
    if "e" in text or "n" in text:  # exponent form (or inf/nan, which exact_seconds rejects)
        return int(exact_seconds(t).scaleb(6))
    whole, _, fraction = text.partition(".")
    micros = int(whole + fraction[:6].ljust(6, "0"))  # '-0' + '500000': the sign is in whole
    rest = fraction[6:].rstrip("0")
    if rest > "5" or (rest == "5" and micros % 2):  # past half, or a tie on an odd µs: away from 0
        micros += -1 if text[0] == "-" else 1
    return micros


_Key = tuple[str, InstanceState, int, float, type, int]
"""What a clipped interval is billed by: function, state, GPU MB, cpus (and its type: ``1`` and ``1.0``
are equal but write different decimals), memory MB."""


class _Tally:
    """A bill's intervals clipped to the window in whole µs, grouped by :data:`_Key`.

    Each key keeps its parts' starts and ends (``spans``), in order; ``functions`` lists each
    function's keys in the order they first occur (that order is the order of ``state_seconds`` and
    of ties in the always-on maxima, as when parts were kept one by one). With minute rounding,
    ``padding`` holds each instance's round-up (one per instance and usage), under the key of the
    part that ends last (the first such part): the shape it is charged at.

    Clipping happens on the floats first: :func:`exact_seconds` is monotone, so ``max(exact(t), lo)``
    is ``lo`` when ``t <= since`` (and ``min(exact(t), hi)`` is ``hi`` when ``t >= until``). The other
    times lie between ``since`` and ``until``, so one bound on ``|t × 10⁶|`` serves test 1 of
    :func:`_micros` for all of them; it is inlined here, the rest goes to :func:`_micros_text`.
    """

    __slots__ = ("functions", "padding", "spans")

    def __init__(self, intervals: Iterable[LedgerInterval], function: str | None, since: float,
                 until: float, by_minute: bool) -> None:
        lo, hi = _micros(since), _micros(until)
        # |y| <= Y for every y = t × 10⁶ computed below (rounding is monotone); see _micros, test 1
        limit = _FLOAT_SAFE - max(abs(since), abs(until)) * 1e6 * _TWO_M51
        spans: dict[_Key, tuple[list[int], list[int]]] = {}
        last: dict[tuple[str, str, Usage], list[Any]] = {}  # (fn, instance, usage) → [µs, end, key]
        for interval in intervals:
            name = interval.function
            if function is not None and name != function:
                continue
            t = interval.start
            if t <= since:
                start = lo
            else:
                y = t * 1e6
                start = round(y)
                if not -limit < y - start < limit:
                    start = _micros_text(t)
            until_t = interval.end  # (its own name: a float local compiled by mypyc cannot hold None)
            if until_t is None or until_t >= until:
                end = hi
            else:
                y = until_t * 1e6
                end = round(y)
                if not -limit < y - end < limit:
                    end = _micros_text(until_t)
            if end <= start:
                continue
            cpus = interval.cpus
            key = (name, interval.state, interval.gpu_memory_mb, cpus, type(cpus), interval.memory_mb)
            span = spans.get(key)
            if span is None:
                span = spans[key] = ([], [])
            span[0].append(start)
            span[1].append(end)
            if by_minute:
                state = interval.state
                instance = (name, interval.instance_id, _USAGE.get(state) or classify(state))
                seen = last.get(instance)
                if seen is None:
                    last[instance] = [end - start, end, key]
                else:
                    seen[0] += end - start
                    if end > seen[1]:
                        seen[1:] = end, key
        self.spans = spans
        self.functions: dict[str, list[_Key]] = {}
        for key in spans:
            self.functions.setdefault(key[0], []).append(key)
        self.padding: dict[_Key, list[int]] = {}
        for raw, _, key in last.values():  # 61 s → ceil(61 / 60) × 60 = 120 s: 59 s of padding
            self.padding.setdefault(key, []).append(-raw % _MINUTE_US)


_MINUTE_US = 60_000_000


def _twos(n: int) -> int:
    """How many times 2 divides ``n`` (≠ 0)."""
    return (n & -n).bit_length() - 1


class _Meter:
    """One usage's sums, as the parts' decimals would add up one by one.

    Per key, the µs of its parts ``k_i`` add up exactly; each meter is then one product per key:
    ``Σ (k_i·10⁻⁶ × m / 1024) = (Σ k_i)·m / 1024 × 10⁻⁶`` (decimals of 100 digits are exact here). A sum
    of decimals takes the smallest exponent of its terms, so that is worked out too (``repr`` shows
    it): ``k·10⁻⁶`` has exponent -6; ``k·10⁻⁶ × c`` has -6 + the exponent of ``Decimal(repr(c))``;
    ``k·10⁻⁶ × m / 1024`` (exact division: the ideal exponent -6 unless the quotient needs more
    places) has ``-6 - max(0, 10 - v₂(k·m))``, so over a key ``-6 - max(0, 10 - v₂(m) - v₂(k₁|k₂|…))``.
    The running sums started at ``Decimal(0)`` (exponent 0), which a meter with no parts keeps.
    """

    __slots__ = ("cpu_exp", "gpu", "gpu_exp", "memory", "memory_exp", "micros", "used", "vcpu")

    def __init__(self) -> None:
        self.used = False
        self.micros = 0
        self.gpu = self.vcpu = self.memory = _ZERO
        self.gpu_exp = self.cpu_exp = self.memory_exp = 0

    def add(self, key: _Key, micros: int, bits: int) -> None:
        _, _, gpu_mb, cpus, _, memory_mb = key
        self.used = True
        self.micros += micros
        self.gpu += Decimal(micros) * gpu_mb
        self.gpu_exp = min(self.gpu_exp, _per_gb_exponent(gpu_mb, bits))
        vcpus = Decimal(repr(cpus))
        self.vcpu += Decimal(micros) * vcpus
        self.cpu_exp = min(self.cpu_exp, _US_EXP + vcpus.as_tuple().exponent)  # type: ignore[operator]
        self.memory += Decimal(micros) * memory_mb
        self.memory_exp = min(self.memory_exp, _per_gb_exponent(memory_mb, bits))

    def seconds(self) -> Decimal:
        return Decimal(self.micros).scaleb(_US_EXP) if self.used else _ZERO

    def gpu_gb_s(self) -> Decimal:
        return self._at(self.gpu / MB_PER_GB, self.gpu_exp)

    def vcpu_s(self) -> Decimal:
        return self._at(self.vcpu, self.cpu_exp)

    def memory_gb_s(self) -> Decimal:
        return self._at(self.memory / MB_PER_GB, self.memory_exp)

    def _at(self, micro_units: Decimal, exponent: int) -> Decimal:
        if not self.used:
            return _ZERO
        return micro_units.scaleb(_US_EXP).quantize(Decimal((0, (1,), exponent)))


_US_EXP = -6
_GB_TWOS = 10  # MB_PER_GB = 2 ** 10


def _per_gb_exponent(mb: int, bits: int) -> int:
    if not mb or not bits:
        return _US_EXP
    return _US_EXP - max(0, _GB_TWOS - _twos(mb) - _twos(bits))


def _price_line(name: str, keys: list[_Key], tally: _Tally, prices: PriceTable,
                window_s: Decimal) -> BillLine:
    state_micros: dict[str, int] = {}
    meters: dict[Usage, _Meter] = {"active": _Meter(), "idle": _Meter()}
    for key in keys:
        state, gpu_mb, memory_mb = key[1], key[2], key[5]
        starts, ends = tally.spans[key]
        micros = sum(ends) - sum(starts)
        state_name = _NAME[state]
        state_micros[state_name] = state_micros.get(state_name, 0) + micros
        padding = tally.padding.get(key, [])
        bits = 0  # (only needed where a size in MB is not a multiple of 1024)
        if _per_gb_exponent(gpu_mb, 1) < _US_EXP or _per_gb_exponent(memory_mb, 1) < _US_EXP:
            bits = reduce(or_, map(sub, ends, starts), reduce(or_, padding, 0))
        meters[_USAGE.get(state) or classify(state)].add(key, micros + sum(padding), bits)
    active, idle = meters["active"], meters["idle"]
    active_gpu, idle_gpu = active.gpu_gb_s(), idle.gpu_gb_s()
    active_vcpu, idle_vcpu = active.vcpu_s(), idle.vcpu_s()
    active_memory, idle_memory = active.memory_gb_s(), idle.memory_gb_s()
    peak, always_on = _always_on(keys, tally, prices, window_s)
    on_gpu = any(key[2] > 0 for key in keys)
    gpu_cost = active_gpu * prices.gpu_active_per_gb_s + idle_gpu * prices.gpu_idle_per_gb_s
    cpu_cost = active_vcpu * prices.cpu_per_vcpu_s + idle_vcpu * prices.cpu_idle_per_vcpu_s
    memory_cost = active_memory * prices.memory_per_gb_s + idle_memory * prices.memory_idle_per_gb_s
    cost = gpu_cost + cpu_cost + memory_cost  # seed 000: (T0 + T2 + T4) × idle + (T1 + T3) × active
    return BillLine(
        function=name,
        state_seconds={state: Decimal(micros).scaleb(_US_EXP) for state, micros in state_micros.items()},
        active_seconds=active.seconds(),
        idle_seconds=idle.seconds(),
        gpu_gb_seconds_active=active_gpu,
        gpu_gb_seconds_idle=idle_gpu,
        vcpu_seconds_active=active_vcpu,
        vcpu_seconds_idle=idle_vcpu,
        memory_gb_seconds_active=active_memory,
        memory_gb_seconds_idle=idle_memory,
        gpu_cost=gpu_cost,
        cpu_cost=cpu_cost,
        memory_cost=memory_cost,
        peak_instances=peak,
        always_on_cost=always_on,
        vcpu_seconds=active_vcpu + idle_vcpu,
        memory_gb_seconds=active_memory + idle_memory,
        cost=cost,
        saving=always_on - cost,
        saving_pct=_pct(always_on - cost, always_on),
        always_on_seconds=window_s,
        always_on_basis="gpu" if on_gpu else "cpu",
    )


def _always_on(keys: list[_Key], tally: _Tally, prices: PriceTable,
               window_s: Decimal) -> tuple[int, Decimal]:
    """The same peak fleet kept on for the whole window, frozen or not (seed 001's comparison).

    A GPU function needs one dedicated GPU server per GPU instance it ever ran at once, whatever slice
    of the card each used (seed 001 sets a 4 GB instance against a whole T4): peak × hours × price
    (1 × 24 × 2 = 48 a day). A CPU-only function keeps its peak instances at their largest shape,
    always active, at the table's own CPU and memory prices.
    """
    gpu = [key for key in keys if key[2] > 0]
    if gpu:
        peak = _peak([tally.spans[key] for key in gpu])
        cost = peak * window_s * prices.always_on_gpu_per_hour / _HOUR_S
        return peak, cost.quantize(_ALWAYS_ON_PLACES, rounding=ROUND_HALF_EVEN)
    peak = _peak([tally.spans[key] for key in keys])
    # (the first key with the largest value holds the first part with it: keys go in order of first use)
    vcpus = Decimal(repr(max(key[3] for key in keys)))
    memory_gb = Decimal(max(key[5] for key in keys)) / MB_PER_GB
    per_second = vcpus * prices.cpu_per_vcpu_s + memory_gb * prices.memory_per_gb_s
    return peak, peak * window_s * per_second


def _peak(spans: list[tuple[list[int], list[int]]]) -> int:
    """Most parts open at once; half-open, so an end and a start at the same time do not overlap.

    Right after a start at ``s``, ``#{starts <= s} - #{ends <= s}`` parts are open, and the count
    only rises at a start, so the peak is the largest of these over the sorted starts."""
    starts = sorted(chain.from_iterable(span[0] for span in spans))
    ends = sorted(chain.from_iterable(span[1] for span in spans))
    peak = closed = 0
    for opened, start in enumerate(starts, 1):
        while ends[closed] <= start:  # stops in range: the part opening at start ends after it
            closed += 1
        if opened - closed > peak:
            peak = opened - closed
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
