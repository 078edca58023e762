"""Bills from ledger intervals: seed 000's idle mode, seed 001's examples, clipping, rounding, prices.

Unless a test says otherwise prices are GPU-only (CPU and memory free) so the numbers are the seeds'
own, and instances are 16 GB GPU instances (16384 MB / 1024 = 16 GB) of function ``sd``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from torpor.clock import FakeClock
from torpor.errors import SpecError
from torpor.lifecycle.state import InstanceState
from torpor.metering.billing import (
    InstanceInfo,
    LedgerInterval,
    bill,
    classify,
    intervals_from_timeline,
)
from torpor.metering.prices import PriceTable, load_prices

S = InstanceState
D = Decimal
DAY_S = 86_400
GPU_ONLY = PriceTable(cpu_per_vcpu_s=0, cpu_idle_per_vcpu_s=0, memory_per_gb_s=0, memory_idle_per_gb_s=0)


def make_info(**overrides: Any) -> InstanceInfo:
    """A 16 GB GPU instance of ``sd`` with 4 vCPUs and 16 GB of memory, with ``overrides``."""
    fields: dict[str, Any] = {
        "instance_id": "i-1",
        "function": "sd",
        "revision": "1",
        "pool": "default",
        "device": "cuda:0",
        "gpu_memory_mb": 16384,
        "cpus": 4.0,
        "memory_mb": 16384,
    }
    return InstanceInfo(**{**fields, **overrides})


def make_interval(state: InstanceState, start: float, end: float | None, **overrides: Any) -> LedgerInterval:
    return LedgerInterval.of(make_info(**overrides), state, start, end)


def windows(t0: float, t1: float, t2: float, t3: float, t4: float) -> list[LedgerInterval]:
    """Seed 000's picture: idle T0, active T1, idle T2, active T3, idle T4, back to back."""
    edges = [0.0, t0, t0 + t1, t0 + t1 + t2, t0 + t1 + t2 + t3, t0 + t1 + t2 + t3 + t4]
    states = [S.FROZEN, S.BUSY, S.FROZEN, S.BUSY, S.FROZEN]
    return [make_interval(state, a, b) for state, a, b in zip(states, edges, edges[1:], strict=False)]


def invocations(count: int, *, gpu_memory_mb: int = 4096) -> list[LedgerInterval]:
    """``count`` one-second invocations spread over a day, each on its own on-demand instance."""
    return [
        make_interval(S.BUSY, t, t + 1, instance_id=f"i-{i}", gpu_memory_mb=gpu_memory_mb)
        for i in range(count)
        for t in [float(i * DAY_S // count)]  # ≥ 1 s apart for count ≤ 86,400: never overlapping
    ]


class TestClassify:
    @pytest.mark.parametrize("state", [S.STARTING, S.READY, S.BUSY, S.DRAINING])
    def test_active(self, state: InstanceState) -> None:
        """Starting, ready, busy and draining instances hold live resources: active."""
        assert classify(state) == "active"

    def test_frozen_is_idle(self) -> None:
        """A frozen instance is idle, also when named by its string value."""
        assert classify("frozen") == "idle"

    @pytest.mark.parametrize("state", [S.STOPPED, S.FAILED])
    def test_gone_is_not_billed(self, state: InstanceState) -> None:
        """Stopped and failed instances have no billed state, and no ledger interval."""
        with pytest.raises(ValueError, match="not a billed state"):
            classify(state)
        with pytest.raises(ValueError, match="not a billed state"):
            make_interval(state, 0, 1)

    def test_end_before_start(self) -> None:
        """An interval that ends before it starts is refused."""
        with pytest.raises(ValueError, match="before it starts"):
            make_interval(S.READY, 10, 5)


class TestSeed000IdleMode:
    def test_function_compute_example(self) -> None:
        """1 h provisioned on 16 GB, 1,800 s active: 0.5184 active + 0.2016 idle = 0.72 (default prices)."""
        result = bill(windows(600, 900, 600, 900, 600), GPU_ONLY, since=0, until=3600)
        line = result.line("sd")
        assert (line.active_seconds, line.idle_seconds) == (1800, 1800)
        assert line.gpu_gb_seconds_active == 28_800  # 1,800 s × 16 GB
        assert line.gpu_cost == D("0.72")  # 28,800 × 0.000018 + 28,800 × 0.000007 = 0.5184 + 0.2016
        assert line.state_seconds == {"busy": 1800, "frozen": 1800}

    def test_without_idle_mode(self) -> None:
        """The same hour always active costs 16 × 3,600 × 0.000018 = 1.0368."""
        result = bill([make_interval(S.READY, 0, 3600)], GPU_ONLY, since=0, until=3600)
        assert result.cost == D("1.0368")

    def test_formula_with_chosen_prices(self) -> None:
        """(T0 + T2 + T4) × idle + (T1 + T3) × active, per GB: (10+30+50)·0.001·16 + (20+40)·0.01·16."""
        prices = GPU_ONLY.model_copy(
            update={"gpu_idle_per_gb_s": D("0.001"), "gpu_active_per_gb_s": D("0.01")}
        )
        result = bill(windows(10, 20, 30, 40, 50), prices, since=0, until=150)
        assert result.cost == D("11.04")  # 90 × 0.001 × 16 = 1.44; 60 × 0.01 × 16 = 9.6

    @settings(max_examples=200)
    @given(
        t=st.tuples(*[st.integers(min_value=0, max_value=10**6)] * 5),
        idle=st.decimals(min_value=0, max_value=1, places=8),
        active=st.decimals(min_value=0, max_value=1, places=8),
    )
    def test_formula_holds_exactly(self, t: tuple[int, ...], idle: Decimal, active: Decimal) -> None:
        """For any windows and prices the cost is exactly seed 000's formula times the 16 GB."""
        prices = GPU_ONLY.model_copy(update={"gpu_idle_per_gb_s": idle, "gpu_active_per_gb_s": active})
        t0, t1, t2, t3, t4 = t
        result = bill(windows(*map(float, t)), prices, since=0, until=sum(t))
        assert result.cost == ((t0 + t2 + t4) * idle + (t1 + t3) * active) * 16

    def test_always_on_comparison(self) -> None:
        """Against one GPU at 2 an hour: 2 - 0.72 = 1.28 saved, 64 %."""
        result = bill(windows(600, 900, 600, 900, 600), GPU_ONLY, since=0, until=3600)
        assert (result.always_on_cost, result.saving, result.saving_pct) == (2, D("1.28"), D("64.00"))


class TestSeed001OnDemand:
    def test_3600_invocations(self) -> None:
        """3,600 × 4 × 0.000018 = 0.2592 a day, against 2 × 24 = 48 always on."""
        line = bill(invocations(3600), GPU_ONLY, since=0, until=DAY_S).line("sd")
        assert line.active_seconds == 3600  # 3,600 / 86,400 = 4.1 % utilization
        assert line.gpu_gb_seconds_active == 14_400  # 3,600 s × 4096 MB / 1024 = 4 GB
        assert (line.cost, line.always_on_cost) == (D("0.2592"), 48)
        assert line.saving == D("47.7408")
        assert line.saving_pct == D("99.46")  # "more than 99%"

    def test_50000_invocations(self) -> None:
        """50,000 × 4 × 0.000018 = 3.6 a day, against 48: 92.5 % saved ("more than 90%")."""
        line = bill(invocations(50_000), GPU_ONLY, since=0, until=DAY_S).line("sd")
        assert (line.cost, line.always_on_cost, line.saving_pct) == (D("3.6"), 48, D("92.50"))
        assert line.peak_instances == 1  # invocations never overlap: one always-on GPU suffices

    def test_gpu_fee_with_default_prices(self) -> None:
        """With the default table the GPU fee is still 0.2592; CPU and memory are priced on top."""
        line = bill(invocations(3600), PriceTable(), since=0, until=DAY_S).line("sd")
        assert line.gpu_cost == D("0.2592")
        assert line.cpu_cost == D("0.288")  # 3,600 s × 4 vCPU × 0.00002
        assert line.memory_cost == D("0.1728")  # 3,600 s × 16 GB × 0.000003


class TestClipping:
    def test_clipped_to_window(self) -> None:
        """Only the parts inside [since, until) count: 50 s of [-100, 50) and 10 s of [90, 200)."""
        intervals = [make_interval(S.READY, -100, 50), make_interval(S.READY, 90, 200, instance_id="i-2")]
        assert bill(intervals, GPU_ONLY, since=0, until=100).line("sd").active_seconds == 60

    def test_outside_window_has_no_line(self) -> None:
        """An interval that ends at since, or starts at until, is not billed at all."""
        intervals = [make_interval(S.READY, -10, 0), make_interval(S.READY, 100, 110, instance_id="i-2")]
        result = bill(intervals, GPU_ONLY, since=0, until=100)
        assert (result.lines, result.cost, result.saving_pct) == ((), 0, None)

    def test_open_interval_runs_to_until(self) -> None:
        """A still-open interval started at 40 counts 60 s in [0, 100): 60 × 16 × 0.000007."""
        result = bill([make_interval(S.FROZEN, 40, None)], GPU_ONLY, since=0, until=100)
        assert result.line("sd").idle_seconds == 60
        assert result.cost == D("0.00672")

    def test_open_interval_after_until(self) -> None:
        """An interval opened after the window ends is not in it."""
        assert bill([make_interval(S.READY, 150, None)], GPU_ONLY, since=0, until=100).lines == ()

    def test_until_before_since(self) -> None:
        """A window that ends before it starts is refused."""
        with pytest.raises(ValueError, match="before since"):
            bill([], GPU_ONLY, since=10, until=5)


class TestNoDoubleCounting:
    def test_consecutive_windows_add_up(self) -> None:
        """Day 1 + day 2 of an interval spanning midnight is the two-day bill, second for second."""
        intervals = [make_interval(S.READY, 80_000, 90_000), make_interval(S.FROZEN, 90_000, None)]
        day1 = bill(intervals, GPU_ONLY, since=0, until=DAY_S)
        day2 = bill(intervals, GPU_ONLY, since=DAY_S, until=2 * DAY_S)
        both = bill(intervals, GPU_ONLY, since=0, until=2 * DAY_S)
        assert day1.cost + day2.cost == both.cost
        assert both.line("sd").active_seconds == 10_000
        assert both.line("sd").idle_seconds == 2 * DAY_S - 90_000

    @settings(max_examples=200)
    @given(
        start=st.integers(min_value=0, max_value=10**6),
        length=st.integers(min_value=1, max_value=10**6),
        cut=st.integers(min_value=0, max_value=2 * 10**6),
    )
    def test_window_split_anywhere(self, start: int, length: int, cut: int) -> None:
        """bill[0, cut) + bill[cut, 2e6) = bill[0, 2e6): a second is never billed twice or lost."""
        interval = [make_interval(S.BUSY, start, start + length)]
        whole = bill(interval, PriceTable(), since=0, until=2 * 10**6)
        parts = [
            bill(interval, PriceTable(), since=0, until=cut),
            bill(interval, PriceTable(), cut, 2 * 10**6),
        ]
        assert parts[0].cost + parts[1].cost == whole.cost

    @settings(max_examples=300)
    @given(
        start=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        length=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False),
        fraction=st.floats(min_value=0, max_value=1),
        state=st.sampled_from([S.STARTING, S.READY, S.BUSY, S.FROZEN, S.DRAINING]),
        cpus=st.sampled_from([0.25, 1.0, 3.5]),
        gpu_memory_mb=st.sampled_from([0, 1024, 1536, 24576]),
    )
    def test_interval_split_anywhere(
        self,
        start: float,
        length: float,
        fraction: float,
        state: InstanceState,
        cpus: float,
        gpu_memory_mb: int,
    ) -> None:
        """Cutting an interval in two at any point leaves the per-second cost exactly unchanged."""
        end = start + length
        cut = min(max(start + fraction * length, start), end)
        shape = {"cpus": cpus, "gpu_memory_mb": gpu_memory_mb}
        whole = [make_interval(state, start, end, **shape)]
        split = [make_interval(state, start, cut, **shape), make_interval(state, cut, end, **shape)]
        for since, until in [(-2e6, 2e6), (start + length / 3, 2e6)]:
            assert (
                bill(split, PriceTable(), since, until).cost == bill(whole, PriceTable(), since, until).cost
            )


class TestMinuteRounding:
    MINUTE = PriceTable(rounding="minute")

    def test_rounded_up_per_instance_and_usage(self) -> None:
        """Busy 10 s + ready 5 s = 15 s active → 60 s; frozen 61 s → 120 s."""
        intervals = [
            make_interval(S.BUSY, 0, 10),
            make_interval(S.READY, 10, 15),
            make_interval(S.FROZEN, 15, 76),
        ]
        prices = GPU_ONLY.model_copy(update={"rounding": "minute"})
        line = bill(intervals, prices, since=0, until=100).line("sd")
        assert (line.active_seconds, line.idle_seconds) == (60, 120)
        assert line.state_seconds == {"busy": 10, "ready": 5, "frozen": 61}  # raw, before rounding
        assert line.cost == D("0.03072")  # 60 × 16 × 0.000018 + 120 × 16 × 0.000007 = 0.01728 + 0.01344

    def test_rounded_per_instance(self) -> None:
        """Two instances busy 1 s each are two minutes, not one."""
        intervals = [make_interval(S.BUSY, 0, 1), make_interval(S.BUSY, 0, 1, instance_id="i-2")]
        assert bill(intervals, self.MINUTE, since=0, until=100).line("sd").active_seconds == 120

    def test_whole_minutes_unchanged(self) -> None:
        """120 s stays 120 s; the per-second table bills the same 120 s."""
        for prices in (self.MINUTE, PriceTable()):
            line = bill([make_interval(S.READY, 0, 120)], prices, since=0, until=200).line("sd")
            assert line.active_seconds == 120
            assert line.vcpu_seconds == 480  # 120 s × 4 vCPU

    def test_cpu_and_memory_rounded_too(self) -> None:
        """The padded seconds are charged at the instance's shape: 60 s × 4 vCPU, 60 s × 16 GB."""
        line = bill([make_interval(S.READY, 0, 1)], self.MINUTE, since=0, until=100).line("sd")
        assert (line.vcpu_seconds, line.memory_gb_seconds) == (240, 960)


class TestFunctionFilter:
    def test_only_that_function(self) -> None:
        """function='tts' bills tts alone; totals are its line's."""
        intervals = [
            make_interval(S.READY, 0, 100),
            make_interval(S.READY, 0, 50, function="tts", instance_id="t-1"),
        ]
        result = bill(intervals, GPU_ONLY, since=0, until=100, function="tts")
        assert [line.function for line in result.lines] == ["tts"]
        assert result.cost == result.line("tts").cost == D("0.0144")  # 50 s × 16 GB × 0.000018

    def test_all_functions_sorted(self) -> None:
        """Without a filter every function gets a line, sorted by name, and totals add up."""
        intervals = [
            make_interval(S.READY, 0, 100, function="tts"),
            make_interval(S.READY, 0, 100, instance_id="i-2"),
        ]
        result = bill(intervals, GPU_ONLY, since=0, until=100)
        assert [line.function for line in result.lines] == ["sd", "tts"]
        assert result.cost == D("0.0576")  # 2 × 100 s × 16 GB × 0.000018
        with pytest.raises(KeyError, match="nope"):
            result.line("nope")


class TestAlwaysOn:
    def test_peak_concurrent_gpus(self) -> None:
        """Two GPU instances overlapping at some point → two GPUs × 1 h × 2 = 4."""
        intervals = [make_interval(S.BUSY, 0, 2000), make_interval(S.FROZEN, 1000, 3000, instance_id="i-2")]
        line = bill(intervals, GPU_ONLY, since=0, until=3600).line("sd")
        assert (line.peak_instances, line.always_on_cost) == (2, 4)

    def test_back_to_back_is_one_gpu(self) -> None:
        """One instance ending as the next starts needs one GPU: 1 × 0.5 h × 2 = 1."""
        intervals = [make_interval(S.BUSY, 0, 900), make_interval(S.BUSY, 900, 1800, instance_id="i-2")]
        line = bill(intervals, GPU_ONLY, since=0, until=1800).line("sd")
        assert (line.peak_instances, line.always_on_cost) == (1, 1)

    def test_peak_follows_each_instances_states(self) -> None:
        """i-1 starting 0-100, ready 100-1000, draining 1000-1100 (one life, one GPU); i-2 frozen
        500-600 and busy 700-800 (a gap: no instance at 600-700 but i-1): two GPUs at most, and
        one GPU only when i-2 comes back just as i-1's life ends (1100-1200): 2 × 1 h × 2 = 4,
        then 1 × 1 h × 2 = 2."""
        life = [make_interval(S.STARTING, 0, 100), make_interval(S.READY, 100, 1000),
                make_interval(S.DRAINING, 1000, 1100)]
        overlapping = [make_interval(S.FROZEN, 500, 600, instance_id="i-2"),
                       make_interval(S.BUSY, 700, 800, instance_id="i-2")]
        line = bill(life + overlapping, GPU_ONLY, since=0, until=3600).line("sd")
        assert (line.peak_instances, line.always_on_cost) == (2, 4)
        after = [make_interval(S.BUSY, 1100, 1200, instance_id="i-2")]
        line = bill(life + after, GPU_ONLY, since=0, until=3600).line("sd")
        assert (line.peak_instances, line.always_on_cost) == (1, 2)

    def test_cpu_only_function(self) -> None:
        """A CPU function compares with its peak shape always on: 100 s × (1 × 0.00002 + 2 × 0.000003)."""
        shape = {"gpu_memory_mb": 0, "device": "cpu", "cpus": 1.0, "memory_mb": 2048}
        line = bill([make_interval(S.BUSY, 0, 10, **shape)], PriceTable(), since=0, until=100).line("sd")
        assert line.always_on_cost == D("0.0026")  # 100 × 0.000026
        assert line.cost == D("0.00026")  # 10 × 0.000026
        assert line.saving_pct == D("90.00")

    def test_free_always_on_has_no_percentage(self) -> None:
        """With a zero always-on price the saving percentage is None, not a division by zero."""
        prices = GPU_ONLY.model_copy(update={"always_on_gpu_per_hour": D(0)})
        line = bill([make_interval(S.BUSY, 0, 10)], prices, since=0, until=100).line("sd")
        assert (line.always_on_cost, line.saving_pct) == (0, None)


class TestTimeline:
    def test_story(self) -> None:
        """Start 0, ready 2, frozen 10, thawed 15, busy 20, ready 25, stopped 30: six intervals."""
        clock, info, events = FakeClock(), make_info(), []
        for step_s, state in [
            (0, S.STARTING),
            (2, S.READY),
            (8, S.FROZEN),
            (5, S.READY),
            (5, S.BUSY),
            (5, S.READY),
            (5, S.STOPPED),
        ]:
            clock.advance(step_s)
            events.append((clock.now(), info, state))
        got = [(iv.state, iv.start, iv.end) for iv in intervals_from_timeline(events, clock.now())]
        assert got == [
            (S.STARTING, 0, 2),
            (S.READY, 2, 10),
            (S.FROZEN, 10, 15),
            (S.READY, 15, 20),
            (S.BUSY, 20, 25),
            (S.READY, 25, 30),
        ]
        line = bill(intervals_from_timeline(events, clock.now()), GPU_ONLY, 0, 30).line("sd")
        assert (line.active_seconds, line.idle_seconds) == (25, 5)

    def test_live_instance_ends_at_now_or_stays_open(self) -> None:
        """An instance still ready at now=50 ends there; with now=None its interval stays open."""
        events = [(0.0, make_info(), S.STARTING), (2.0, make_info(), S.READY)]
        assert intervals_from_timeline(events, 50)[-1].end == 50
        assert intervals_from_timeline(events, None)[-1].end is None

    def test_repeated_state_does_not_split(self) -> None:
        """ready at 2 and again at 5 is one interval [2, 9)."""
        events = [(2.0, make_info(), S.READY), (5.0, make_info(), S.READY), (9.0, make_info(), S.STOPPED)]
        assert [(iv.start, iv.end) for iv in intervals_from_timeline(events, 9)] == [(2, 9)]

    def test_events_sorted_and_instances_kept_apart(self) -> None:
        """Out-of-order events of two instances give each its own intervals, sorted by start."""
        a, b = make_info(), make_info(instance_id="i-2")
        events = [(5.0, b, S.STARTING), (0.0, a, S.STARTING), (7.0, a, S.FAILED), (9.0, b, S.STOPPED)]
        got = [(iv.instance_id, iv.start, iv.end) for iv in intervals_from_timeline(events, 10)]
        assert got == [("i-1", 0, 7), ("i-2", 5, 9)]

    def test_future_event_refused(self) -> None:
        """A state change after now is a bug in the caller, not something to bill."""
        with pytest.raises(ValueError, match="after now"):
            intervals_from_timeline([(11.0, make_info(), S.READY)], 10)


class TestToJson:
    def test_units_in_names_and_exact_amounts(self) -> None:
        """Fields name their unit (active_seconds, cost), amounts are exact decimal strings, JSON."""
        data = bill(invocations(3600), GPU_ONLY, since=0, until=DAY_S).to_json()
        line = data["functions"][0]
        assert (data["since_epoch_s"], data["until_epoch_s"], data["currency"], data["rounding"]) == (
            0,
            DAY_S,
            "USD",
            "second",
        )
        assert (data["cost"], data["always_on_cost"], data["saving"], data["saving_pct"]) == (
            "0.2592",
            "48",
            "47.7408",
            "99.46",
        )
        assert (line["active_seconds"], line["idle_seconds"], line["gpu_gb_seconds_active"],
                line["state_seconds"]) == (
            "3600",
            "0",
            "14400",
            {"busy": "3600"},
        )
        assert json.loads(json.dumps(data)) == data


class TestPriceTable:
    def test_defaults(self) -> None:
        """Defaults are seed 001's active price, Function Compute's idle price and seed 001's 2 an hour."""
        prices = PriceTable()
        assert (prices.gpu_active_per_gb_s, prices.gpu_idle_per_gb_s) == (D("0.000018"), D("0.000007"))
        assert (prices.always_on_gpu_per_hour, prices.rounding, prices.currency) == (2, "second", "USD")

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("gpu_idle_per_gb_s", -1),
            ("cpu_per_vcpu_s", "cheap"),
            ("rounding", "hour"),
            ("currency", "usd"),
            ("always_on_gpu_per_hour", float("nan")),
        ],
    )
    def test_errors_name_their_field(self, field: str, value: object) -> None:
        """A bad value is refused with the field's name in the error."""
        with pytest.raises(ValidationError, match=field):
            PriceTable.model_validate({field: value})

    def test_unknown_field(self) -> None:
        """A misspelt price is an error, not a silently ignored default."""
        with pytest.raises(ValidationError, match="gpu_price"):
            PriceTable.model_validate({"gpu_price": 1})


class TestLoadPrices:
    def test_none_is_defaults(self) -> None:
        """No config file: the default table."""
        assert load_prices(None) == PriceTable()

    def test_reads_prices_section(self, tmp_path: Path) -> None:
        """YAML floats arrive exact: 0.00001 is Decimal('0.00001'); other sections are left alone."""
        config = tmp_path / "server.yaml"
        config.write_text(
            "gateway: {port: 8080}\nprices:\n  gpu_idle_per_gb_s: 0.00001\n  rounding: minute\n"
        )
        prices = load_prices(config)
        assert (prices.gpu_idle_per_gb_s, prices.rounding, prices.gpu_active_per_gb_s) == (
            D("0.00001"),
            "minute",
            D("0.000018"),
        )

    def test_no_prices_section(self, tmp_path: Path) -> None:
        """A config file without prices gives the defaults; so does an empty one."""
        (tmp_path / "a.yaml").write_text("gateway: {port: 8080}\n")
        (tmp_path / "b.yaml").write_text("")
        assert load_prices(tmp_path / "a.yaml") == load_prices(tmp_path / "b.yaml") == PriceTable()

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            (
                "prices:\n  gpu_idle_per_gb_s: -0.1\n",
                "prices.gpu_idle_per_gb_s: Input should be greater than or equal to 0",
            ),
            ("prices:\n  gpu_idle: 0.1\n", "prices.gpu_idle: unknown field"),
            ("prices: [1, 2]\n", "prices: must be a mapping of fields"),
            ("- 1\n", "(top level): must be a mapping of sections"),
            ("prices: {\n", "not valid YAML"),
        ],
    )
    def test_errors_name_file_and_field(self, tmp_path: Path, text: str, message: str) -> None:
        """Every problem is a SpecError naming the file and the field."""
        config = tmp_path / "server.yaml"
        config.write_text(text)
        with pytest.raises(SpecError) as caught:
            load_prices(config)
        assert str(caught.value).startswith(f"{config}: ")
        assert message in str(caught.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is said so."""
        with pytest.raises(SpecError, match="file not found"):
            load_prices(tmp_path / "nope.yaml")
