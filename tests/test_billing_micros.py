"""Bills worked out in whole microseconds give the decimals of the one-part-at-a-time Decimal sums.

``bill`` turns each time into integer µs (``_micros``: a proven float test, else ``repr``'s digits,
else :func:`exact_seconds`), adds µs per (function, state, shape) and prices each meter once. These
tests pin the conversion on the values where it is easy to get wrong (ties at the 7th decimal,
0.1 + 0.2, -0.0, epoch seconds whose float has no 7th decimal to spare), bills of many intervals
whose totals are worked out by hand, and, against :func:`reference_bill` (the Decimal-per-part
algorithm ``bill`` used before, kept here only as a test oracle), random ledgers: same ``repr``,
exponents and signs of zero included, which is what ``bench/simulate_fingerprint`` hashes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from torpor.lifecycle.state import InstanceState as S
from torpor.metering.billing import (
    BILLED_STATES,
    Bill,
    BillLine,
    InstanceInfo,
    LedgerInterval,
    _micros,
    _pct,
    bill,
    classify,
    exact_seconds,
)
from torpor.metering.prices import MB_PER_GB, PriceTable

D = Decimal
GPU_ONLY = PriceTable(cpu_per_vcpu_s=0, cpu_idle_per_vcpu_s=0, memory_per_gb_s=0, memory_idle_per_gb_s=0)
EPOCH = 1_700_000_000


def exact_micros(t: float) -> int:
    with localcontext() as ctx:
        ctx.prec = 100
        return int(exact_seconds(t).scaleb(6))


def micros(t: float) -> int:
    """``_micros`` in a bill's context (100 digits: a time of 1e22 s has 29 in µs)."""
    with localcontext() as ctx:
        ctx.prec = 100
        return _micros(t)


def interval(state: S, start: float, end: float | None, instance_id: str = "i-1", **shape: Any
             ) -> LedgerInterval:
    fields: dict[str, Any] = {"instance_id": instance_id, "function": "sd", "revision": "1",
                              "pool": "default", "device": "cuda:0", "gpu_memory_mb": 16384,
                              "cpus": 4.0, "memory_mb": 16384}
    return LedgerInterval.of(InstanceInfo(**{**fields, **shape}), state, start, end)


class TestMicros:
    @pytest.mark.parametrize(("t", "expected"), [
        (0.1 + 0.2, 300_000),  # repr 0.30000000000000004: the 7th decimal onwards is 0000000…4
        (1.0000005, 1_000_000),  # a tie: to the even µs
        (1.0000015, 1_000_002),  # a tie: to the even µs, upwards this time
        (-1.0000015, -1_000_002),  # the same magnitude, negative
        (12_345.6789125, 12_345_678_912),
        (86_399.9999995, 86_400_000_000),  # a tie carried into the next whole second
        (5e-07, 0),  # repr '5e-07' (exponent form): a tie, to 0
        (1.5e-06, 2),
        (2.5e-06, 2),
        (0.0, 0),
        (-0.0, 0),  # exact_seconds keeps the sign (-0.000000); as an integer it is 0
        (-5e-07, 0),
        (1e-300, 0),
        (1_700_000_000.123456, 1_700_000_000_123_456),
        (1_733_011_200.25, 1_733_011_200_250_000),
        # at 1.7e9 a float is 2^-22 s (0.24 µs) from the next: repr needs a 7th decimal here
        (float("1700000000.1234565"), 1_700_000_000_123_456),  # repr ...1234565: a tie, to even
        (float("1700000000.1234575"), 1_700_000_000_123_457),  # repr ...1234574: below the tie
        (1_700_000_000.0000005, 1_700_000_000_000_000),  # repr ...0000005: a tie, to even
        (1e16, 10**22),  # repr '1e+16': exponent form
    ])
    def test_hand_values(self, t: float, expected: int) -> None:
        assert micros(t) == expected == exact_micros(t)

    @settings(max_examples=3000, deadline=None)
    @given(st.floats(min_value=-1e80, max_value=1e80, allow_nan=False))
    @example(2.0**-1074)
    @example(0.49999999999999994e-6)
    @example(2.0**50 / 1e6)
    def test_any_float(self, t: float) -> None:
        assert micros(t) == exact_micros(t)

    @settings(max_examples=3000, deadline=None)
    @given(st.integers(-(10**15), 10**15), st.sampled_from(["5", "49", "51", "4999999", "5000001"]))
    def test_near_ties(self, n: int, tail: str) -> None:
        """Times written with a 7th decimal at or around a half µs, from 0 to ~1e9 s and beyond."""
        text = f"{n // 10**6}.{n % 10**6:06d}{tail}"
        for t in (float(text), -float(text)):
            assert micros(t) == exact_micros(t)

    @settings(max_examples=3000, deadline=None)
    @given(st.floats(min_value=1.6e9, max_value=2.2e9))
    def test_epoch_seconds(self, t: float) -> None:
        assert micros(t) == exact_micros(t)


class TestManyIntervals:
    def test_ten_thousand_ties(self) -> None:
        """[i.0000005, i.5000015) for i = 0 … 9,999: each start is a tie that rounds down to i.000000
        (even), each end one that rounds up to i.500002, so each part is 0.500002 s; 5,000.02 s in
        all, × 16 GB × 0.000018 = 1.44000576; one instance, so one GPU at most."""
        parts = [interval(S.BUSY, float(f"{i}.0000005"), float(f"{i}.5000015")) for i in range(10_000)]
        line = bill(parts, GPU_ONLY, 0, 10_000).line("sd")
        assert line.active_seconds == D("5000.02")
        assert line.state_seconds == {"busy": D("5000.02")}
        assert line.gpu_gb_seconds_active == D("80000.32")
        assert line.cost == D("1.44000576")
        assert (line.peak_instances, line.always_on_cost) == (1, D("5.5555555556"))  # 10,000 s × 2/h

    def test_tenths_that_add_up(self) -> None:
        """100,000 back-to-back tenths t = i × 0.1 (0.30000000000000004 and friends are 0.3): the
        parts add up to exactly 10,000 s, split 2:3 between frozen and busy by i mod 5."""
        parts = [interval(S.FROZEN if i % 5 < 2 else S.BUSY, i * 0.1, (i + 1) * 0.1)
                 for i in range(100_000)]
        line = bill(parts, GPU_ONLY, 0, 10_000).line("sd")
        assert (line.idle_seconds, line.active_seconds) == (4_000, 6_000)
        assert line.state_seconds == {"frozen": 4_000, "busy": 6_000}
        assert line.cost == D("2.176")  # 4,000 × 16 × 0.000007 + 6,000 × 16 × 0.000018
        assert line.peak_instances == 1

    def test_epoch_seconds(self) -> None:
        """A day of three instances at epoch times, each part [t, t + 0.25), t = EPOCH + k × 0.5:
        every time is exact in binary, 17,280 parts × 3 × 0.25 s = 12,960 s; all three are up
        together, so three GPUs for the day: 3 × 24 × 2 = 144."""
        parts = [interval(S.READY, EPOCH + k * 0.5, EPOCH + k * 0.5 + 0.25, instance_id=f"i-{n}")
                 for k in range(0, 172_800, 10) for n in range(3)]
        line = bill(parts, GPU_ONLY, EPOCH, EPOCH + 86_400).line("sd")
        assert line.active_seconds == 12_960
        assert (line.peak_instances, line.always_on_cost) == (3, 144)

    def test_epoch_ties(self) -> None:
        """At 1.7e9 s a float has no digit to spare at the 7th decimal; these reprs still end in 5:
        [.0000005, .1234565) is [.000000, .123456) after rounding: 0.123456 s; and
        [.1234575, 2.5) is [.123457, 2.500000): 2.376543 s."""
        parts = [interval(S.BUSY, float(f"{EPOCH}.0000005"), float(f"{EPOCH}.1234565")),
                 interval(S.BUSY, float(f"{EPOCH}.1234575"), EPOCH + 2.5)]
        line = bill(parts, GPU_ONLY, EPOCH, EPOCH + 10).line("sd")
        assert line.active_seconds == D("2.499999")


class TestExponents:
    """A sum of decimals has the smallest exponent of its terms; the meters keep it."""

    def test_gpu_memory_not_a_multiple_of_1024(self) -> None:
        """1 µs × 1000 MB / 1024 = 0.0000009765625 GB-s: 13 decimals, as the per-part product had."""
        part = interval(S.BUSY, 0, 0.000001, gpu_memory_mb=1000, memory_mb=1536, cpus=0.25)
        line = bill([part], PriceTable(), 0, 1).line("sd")
        assert line.gpu_gb_seconds_active.as_tuple() == D("0.0000009765625").as_tuple()
        assert line.memory_gb_seconds_active.as_tuple() == D("0.0000015").as_tuple()  # × 1536/1024
        assert line.vcpu_seconds_active.as_tuple() == D("0.00000025").as_tuple()  # 1E-6 × 0.25
        assert line.idle_seconds.as_tuple() == D(0).as_tuple()  # nothing frozen: Decimal(0)

    def test_smallest_exponent_among_parts(self) -> None:
        """2 s × 1000 MB is whole µs (exponent -6), 0.000001 s × 1000 MB needs 13 decimals: their sum
        keeps 13; with the int cpus 2 the vCPU-seconds keep 6 decimals, and a part of the same shape
        but for cpus 2.0 (equal to 2, written 2.0) makes them 7."""
        parts = [interval(S.BUSY, 0, 2, gpu_memory_mb=1024, cpus=2),
                 interval(S.BUSY, 10, 10.000001, gpu_memory_mb=1000, cpus=2, instance_id="i-2")]
        line = bill(parts, PriceTable(), 0, 20).line("sd")
        assert line.gpu_gb_seconds_active.as_tuple() == D("2.0000009765625").as_tuple()
        assert line.vcpu_seconds_active.as_tuple() == D("4.000002").as_tuple()
        parts.append(interval(S.BUSY, 11, 12, gpu_memory_mb=1024, cpus=2.0, instance_id="i-3"))
        line = bill(parts, PriceTable(), 0, 20).line("sd")
        assert line.vcpu_seconds_active.as_tuple() == D("6.0000020").as_tuple()


class TestMinutePadding:
    def test_charged_at_the_last_shape(self) -> None:
        """i-1 ready 0-10 s at 1 vCPU, then 10-20 s at 2 vCPUs: 20 s → 60 s, the 40 s of padding at
        the last part's 2 vCPUs: 10 × 1 + 10 × 2 + 40 × 2 = 110 vCPU-s."""
        parts = [interval(S.READY, 0, 10, cpus=1.0), interval(S.READY, 10, 20, cpus=2.0)]
        line = bill(parts, PriceTable(rounding="minute"), 0, 100).line("sd")
        assert (line.active_seconds, line.vcpu_seconds_active) == (60, 110)
        assert line.state_seconds == {"ready": 20}


# -- the oracle: the Decimal-per-part algorithm bill() used before the µs rewrite ------------------

def reference_bill(intervals: Iterable[LedgerInterval], prices: PriceTable, since: float, until: float,
                   function: str | None = None,
                   lifetimes: Mapping[str, tuple[float, float | None]] | None = None) -> Bill:
    with localcontext() as ctx:
        ctx.prec = 100
        lo, hi = exact_seconds(since), exact_seconds(until)
        by_function: dict[str, list[tuple[LedgerInterval, Decimal, Decimal]]] = defaultdict(list)
        for iv in intervals:
            if function is not None and iv.function != function:
                continue
            end = hi if iv.end is None else min(exact_seconds(iv.end), hi)
            start = max(exact_seconds(iv.start), lo)
            if end > start:
                by_function[iv.function].append((iv, start, end))
        lines = []
        for name, parts in sorted(by_function.items()):
            if lifetimes is None:
                window_s = hi - lo
            else:
                if name in lifetimes:
                    born_at, gone_at = lifetimes[name]
                    born = exact_seconds(born_at)
                    gone = hi if gone_at is None else exact_seconds(gone_at)
                else:
                    born = min(exact_seconds(iv.start) for iv, _, _ in parts)
                    ends = [iv.end for iv, _, _ in parts]
                    gone = hi if None in ends else max(exact_seconds(e) for e in ends if e is not None)
                window_s = max(min(gone, hi) - max(born, lo), D(0))
            lines.append(_reference_line(name, parts, prices, window_s))
        cost = sum((line.cost for line in lines), D(0))
        always_on = sum((line.always_on_cost for line in lines), D(0))
        return Bill(since, until, prices.currency, prices.rounding, tuple(lines), cost=cost,
                    always_on_cost=always_on, saving=always_on - cost,
                    saving_pct=_pct(always_on - cost, always_on))


def _reference_line(name: str, parts: list[tuple[LedgerInterval, Decimal, Decimal]],
                    prices: PriceTable, window_s: Decimal) -> BillLine:
    meters = {usage: [D(0)] * 4 for usage in ("active", "idle")}  # s, gpu GB-s, vCPU-s, memory GB-s

    def add(usage: str, iv: LedgerInterval, seconds: Decimal) -> None:
        m = meters[usage]
        m[0] += seconds
        m[1] += seconds * iv.gpu_memory_mb / MB_PER_GB
        m[2] += seconds * D(repr(iv.cpus))
        m[3] += seconds * iv.memory_mb / MB_PER_GB

    state_seconds: dict[str, Decimal] = defaultdict(lambda: D(0))
    per_instance: dict[tuple[str, str], list[tuple[LedgerInterval, Decimal, Decimal]]] = defaultdict(list)
    for iv, start, end in parts:
        state_seconds[iv.state.value] += end - start
        usage = classify(iv.state)
        if prices.rounding == "minute":
            per_instance[(iv.instance_id, usage)].append((iv, start, end))
        else:
            add(usage, iv, end - start)
    for (_, usage), mine in per_instance.items():
        for iv, start, end in mine:
            add(usage, iv, end - start)
        raw = sum((end - start for _, start, end in mine), D(0))
        padding = (raw / 60).to_integral_value(rounding=ROUND_CEILING) * 60 - raw
        add(usage, max(mine, key=lambda part: part[2])[0], padding)
    (a_s, a_gpu, a_cpu, a_mem), (i_s, i_gpu, i_cpu, i_mem) = meters["active"], meters["idle"]
    gpu_parts = [p for p in parts if p[0].gpu_memory_mb > 0]
    peak = _reference_peak(gpu_parts or parts)
    if gpu_parts:
        always_on = (peak * window_s * prices.always_on_gpu_per_hour / 3600).quantize(
            D("1e-10"), rounding=ROUND_HALF_EVEN)
    else:
        vcpus = D(repr(max(p[0].cpus for p in parts)))
        memory_gb = D(max(p[0].memory_mb for p in parts)) / MB_PER_GB
        always_on = peak * window_s * (vcpus * prices.cpu_per_vcpu_s + memory_gb * prices.memory_per_gb_s)
    gpu_cost = a_gpu * prices.gpu_active_per_gb_s + i_gpu * prices.gpu_idle_per_gb_s
    cpu_cost = a_cpu * prices.cpu_per_vcpu_s + i_cpu * prices.cpu_idle_per_vcpu_s
    memory_cost = a_mem * prices.memory_per_gb_s + i_mem * prices.memory_idle_per_gb_s
    cost = gpu_cost + cpu_cost + memory_cost
    return BillLine(name, dict(state_seconds), a_s, i_s, a_gpu, i_gpu, a_cpu, i_cpu, a_mem, i_mem,
                    gpu_cost, cpu_cost, memory_cost, peak, always_on, a_cpu + i_cpu, a_mem + i_mem,
                    cost, always_on - cost, _pct(always_on - cost, always_on), window_s,
                    "gpu" if gpu_parts else "cpu")


def _reference_peak(parts: list[tuple[LedgerInterval, Decimal, Decimal]]) -> int:
    edges = sorted([(start, 1) for _, start, _ in parts] + [(end, -1) for _, _, end in parts])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


# -- random ledgers --------------------------------------------------------------------------------

OFFSETS = st.sampled_from([0.0, 0.0, 86_400.0, float(EPOCH), -3600.0])
FRACTIONS = st.one_of(
    st.integers(0, 3600).map(float),
    st.floats(0, 3600, allow_nan=False),
    st.integers(0, 3_600_000_000).map(lambda n: float(f"{n // 10**6}.{n % 10**6:06d}5")),  # ties
    st.integers(0, 36_000).map(lambda n: n * 0.1),  # 0.30000000000000004 and friends
    st.sampled_from([-0.0, 0.0, 1e-7, 5e-7]),
)
SHAPES = st.sampled_from([
    {"gpu_memory_mb": 16384, "cpus": 4.0, "memory_mb": 16384},
    {"gpu_memory_mb": 1000, "cpus": 0.25, "memory_mb": 1536},
    {"gpu_memory_mb": 0, "device": "cpu", "cpus": 1.0, "memory_mb": 1024},
    {"gpu_memory_mb": 0, "device": "cpu", "cpus": 2, "memory_mb": 3000},
    {"gpu_memory_mb": 0, "device": "cpu", "cpus": 2.0, "memory_mb": 3000},
    {"gpu_memory_mb": 0, "device": "cpu", "cpus": 2.0, "memory_mb": 100},
    {"gpu_memory_mb": 0, "device": "cpu", "cpus": -0.0, "memory_mb": 0},
    {"gpu_memory_mb": 0, "device": "cpu", "cpus": 1e-05, "memory_mb": 7},
])


@st.composite
def ledgers(draw: st.DrawFn) -> tuple[float, list[LedgerInterval], float, float]:
    offset = draw(OFFSETS)
    out = []
    for _ in range(draw(st.integers(0, 25))):
        a, b = sorted([offset + draw(FRACTIONS), offset + draw(FRACTIONS)])
        info = InstanceInfo(instance_id=draw(st.sampled_from(["i-1", "i-2", "i-3"])),
                            function=draw(st.sampled_from(["sd", "tts"])), revision="1",
                            pool="default", **{"device": "cuda:0", **draw(SHAPES)})
        state = draw(st.sampled_from(sorted(BILLED_STATES)))
        out.append(LedgerInterval.of(info, state, a, None if draw(st.integers(0, 9)) == 0 else b))
    since, until = sorted([offset + draw(FRACTIONS), offset + draw(FRACTIONS)])
    return offset, out, since, until


PRICE_TABLES = [PriceTable(), PriceTable(rounding="minute"), GPU_ONLY.model_copy(
    update={"rounding": "minute", "gpu_idle_per_gb_s": D("-0")})]


@settings(max_examples=600, deadline=None)
@given(ledgers(), st.sampled_from(PRICE_TABLES), st.sampled_from([None, "sd"]),
       st.sampled_from([None, "none", "both", "sd"]), FRACTIONS, FRACTIONS)
def test_same_as_one_part_at_a_time(ledger: tuple[float, list[LedgerInterval], float, float],
                                    prices: PriceTable, function: str | None, which: str | None,
                                    born: float, gone: float) -> None:
    """Every field of every line, and the bill's repr (exponents, -0), as the Decimal-per-part sums."""
    offset, intervals, since, until = ledger
    lifetimes: dict[str, tuple[float, float | None]] | None = None
    if which is not None:
        spans = {"sd": (offset + born, offset + gone), "tts": (offset - born, None)}
        lifetimes = {name: span for name, span in spans.items() if which in ("both", name)}
    got = bill(iter(intervals), prices, since, until, function, lifetimes)
    want = reference_bill(intervals, prices, since, until, function, lifetimes)
    assert repr(got) == repr(want)
    assert got.to_json() == want.to_json()
