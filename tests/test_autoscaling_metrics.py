"""ConcurrencyRecorder: per-second, time-weighted in-system concurrency and arrivals."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.clock import FakeClock


class Gateway:
    """What the gateway does: report each change of in-system requests, and each arrival."""

    def __init__(self, start: float = 1000.0, retention_s: int = 3600) -> None:
        self.clock = FakeClock(start)
        self.recorder = ConcurrencyRecorder(retention_s=retention_s)

    def level(self, in_system: int) -> None:
        self.recorder.record(self.clock.now(), in_system)

    def arrive(self, count: int = 1) -> None:
        for _ in range(count):
            self.recorder.record_request(self.clock.now())

    def average(self, window_s: float) -> float:
        return self.recorder.window_average(self.clock.now(), window_s)

    def rate(self, window_s: float) -> float:
        return self.recorder.rate(self.clock.now(), window_s)


class TestWindowAverage:
    def test_nothing_recorded_averages_zero(self) -> None:
        """A function that never saw a request has no concurrency."""
        assert ConcurrencyRecorder().window_average(50.0, 60) == 0.0

    def test_constant_level_averages_to_itself(self) -> None:
        """3 requests in the system for the whole window average exactly 3."""
        gw = Gateway()
        gw.level(3)
        gw.clock.advance(120)
        assert gw.average(60) == 3.0  # seconds 1061-1120, all at 3: 180 / 60

    def test_window_before_first_record_counts_from_it(self) -> None:
        """A new function is not diluted by seconds before it existed (Knative's firstWrite)."""
        gw = Gateway()
        gw.level(2)
        gw.clock.advance(10)
        assert gw.average(60) == 2.0  # 1000.0 .. 1011: 2 × 11 s / 11 s

    def test_quiet_seconds_carry_the_last_level(self) -> None:
        """Seconds with no change hold the last level; a drop counts from its second on."""
        gw = Gateway()
        gw.level(2)
        gw.clock.advance(30)
        gw.level(0)
        gw.clock.advance(30)
        # window = seconds 1001-1060: 1001-1029 at 2 (29 s), 1030-1060 at 0 → 58 / 60
        assert gw.average(60) == pytest.approx(58 / 60)

    def test_changes_within_a_second_are_time_weighted(self) -> None:
        """4 requests for a quarter of a second weigh as 1 request for the whole second."""
        gw = Gateway()
        gw.level(0)
        gw.clock.advance(10)
        gw.level(4)
        gw.clock.advance(0.25)
        gw.level(0)
        gw.clock.advance(0.25)
        assert gw.average(1) == 1.0  # second 1010: 4 × 0.25 s + 0 × 0.75 s = 1 request·s

    def test_current_second_counts_at_its_current_level(self) -> None:
        """A request arriving after a quiet hour shows at once, before any time passes."""
        gw = Gateway()
        gw.level(0)
        gw.clock.advance(3600)
        gw.level(1)
        assert gw.average(60) == pytest.approx(1 / 60)  # second 4600 at 1, 59 quiet seconds
        assert gw.average(6) == pytest.approx(1 / 6)

    def test_panic_window_sees_a_burst_first(self) -> None:
        """A 6 s burst of 6 is 6.0 over the 6 s panic window but 0.6 over the 60 s stable one."""
        gw = Gateway()
        gw.level(0)
        gw.clock.advance(60)
        gw.level(6)
        gw.clock.advance(5)
        assert gw.average(6) == 6.0  # seconds 1060-1065 all at 6
        assert gw.average(60) == pytest.approx(0.6)  # 6 × 6 / 60

    def test_fractional_window_uses_whole_seconds_rounded_up(self) -> None:
        """A 6.5 s window is 7 one-second buckets, as Knative sizes its ring: ceil(6.5 / 1)."""
        gw = Gateway()
        gw.level(0)
        gw.clock.advance(100)
        gw.level(7)
        gw.clock.advance(1)
        gw.level(0)
        gw.clock.advance(5)
        assert gw.average(6.5) == 1.0  # seconds 1100-1106: one second at 7 → 7 / 7
        assert gw.average(6) == 0.0  # seconds 1101-1106 all come after the burst

    def test_late_record_never_moves_time_backwards(self) -> None:
        """A stale timestamp is taken as the last record's time, not rewritten into the past."""
        recorder = ConcurrencyRecorder()
        recorder.record(10.0, 2)
        recorder.record(9.0, 0)  # as if at 10.0
        assert recorder.current == 0
        assert recorder.window_average(20.0, 10) == 0.0  # seconds 11-20 at 0

    def test_window_longer_than_retention_is_refused(self) -> None:
        """Asking for more history than is kept fails loudly instead of answering wrongly."""
        recorder = ConcurrencyRecorder(retention_s=60)
        with pytest.raises(ValueError, match="window_s"):
            recorder.window_average(0.0, 61)

    def test_negative_level_is_refused(self) -> None:
        """A negative in-system count is a gateway accounting bug, reported at once."""
        with pytest.raises(ValueError, match="in_system"):
            ConcurrencyRecorder().record(0.0, -1)


class TestRate:
    def test_arrivals_per_second_over_the_window(self) -> None:
        """30 requests spread over a minute are 0.5 requests per second."""
        gw = Gateway()
        gw.level(0)
        for _ in range(30):
            gw.clock.advance(2)
            gw.arrive()
        assert gw.clock.now() == 1060.0
        assert gw.rate(60) == 0.5  # seconds 1001-1060 hold all 30 arrivals: 30 / 60

    def test_new_function_rate_counts_from_first_record(self) -> None:
        """10 arrivals in a function's first 5 seconds are 2 per second, not 10 / 60."""
        gw = Gateway()
        for second in range(5):
            gw.clock.advance(1 if second else 0)
            gw.arrive(2)
        assert gw.clock.now() == 1004.0
        assert gw.rate(60) == 2.0  # 10 arrivals over seconds 1000-1004: 10 / 5 s

    def test_old_arrivals_leave_the_window(self) -> None:
        """Arrivals more than a window ago no longer count."""
        gw = Gateway()
        gw.arrive(10)
        gw.clock.advance(60)
        assert gw.rate(60) == 0.0  # seconds 1001-1060; the arrivals were in second 1000

    def test_last_request_at(self) -> None:
        """The time of the latest arrival, for the scale-to-zero grace period."""
        gw = Gateway()
        assert gw.recorder.last_request_at is None
        gw.arrive()
        gw.clock.advance(7.5)
        gw.arrive()
        gw.clock.advance(3)
        assert gw.recorder.last_request_at == 1007.5


class TestMemory:
    def test_many_changes_in_one_second_share_one_bucket(self) -> None:
        """The hot path allocates at most one bucket per second, however busy."""
        gw = Gateway()
        for i in range(1000):
            gw.arrive()
            gw.level(i % 7)
            gw.clock.advance(0.0009)
        assert gw.recorder.buckets_held == 1  # 1000 × 0.9 ms < 1 s
        assert gw.recorder.current == 999 % 7

    def test_quiet_seconds_take_no_memory(self) -> None:
        """An hour without changes holds one bucket, not 3600."""
        gw = Gateway()
        gw.level(2)
        gw.clock.advance(3599)
        assert gw.recorder.buckets_held == 1
        assert gw.average(3600) == 2.0

    def test_old_seconds_are_dropped_but_their_level_holds(self) -> None:
        """Past retention the buckets go, and the level they carried still counts."""
        gw = Gateway(retention_s=10)
        gw.level(5)
        gw.clock.advance(100)
        gw.level(5)
        gw.clock.advance(5)
        gw.level(1)  # second 1105; second 1000 is older than 1105 - 10 + 1 = 1096 and is dropped
        assert gw.recorder.buckets_held == 2
        # seconds 1096-1105: 1096-1099 at 5 (carried), 1100-1104 at 5, 1105 at 1 → 46 / 10
        assert gw.average(10) == pytest.approx(4.6)

    def test_buckets_never_exceed_retention(self) -> None:
        """A change every second for an hour and more keeps at most retention_s buckets."""
        gw = Gateway(retention_s=60)
        for i in range(500):
            gw.level(i % 3)
            gw.clock.advance(1)
        assert gw.recorder.buckets_held == 60


def _reference_average(changes: list[tuple[float, int]], now: float, window_s: float) -> float:
    """Brute force: integrate the piecewise-constant level over the window, second by second.

    The window is seconds ``int(now) - ceil(window_s) + 1 .. int(now)``, starting no earlier than the
    first change, with the last level held to the end of ``now``'s second.
    """
    end = int(now) + 1
    start = max(float(end - math.ceil(window_s)), changes[0][0])
    points = [*changes, (float(end), 0)]
    area = 0.0
    for (t0, level), (t1, _) in itertools.pairwise(points):
        lo, hi = max(t0, start), min(t1, end)
        if hi > lo:
            area += level * (hi - lo)
    return area / (end - start)


def replay(steps: list[tuple[float, int]], tail_s: float
           ) -> tuple[ConcurrencyRecorder, list[tuple[float, int]], float]:
    """Record ``(gap s, level)`` changes from t=500; the recorder, the changes and the end time."""
    recorder = ConcurrencyRecorder(retention_s=120)
    now = 500.0
    changes: list[tuple[float, int]] = []
    for gap_s, level in steps:
        now += gap_s
        recorder.record(now, level)
        changes.append((now, level))
    return recorder, changes, now + tail_s


class TestAgainstBruteForce:
    @given(
        steps=st.lists(st.tuples(st.floats(0.0, 30.0), st.integers(0, 50)), min_size=1, max_size=40),
        tail_s=st.floats(0.0, 90.0),
        window_s=st.sampled_from([1, 6, 6.5, 60]),
    )
    def test_window_average_is_the_exact_integral(
        self, steps: list[tuple[float, int]], tail_s: float, window_s: float
    ) -> None:
        """For any change sequence the bucketed average equals integrating the levels directly."""
        recorder, changes, now = replay(steps, tail_s)
        expected = _reference_average(changes, now, window_s)
        assert recorder.window_average(now, window_s) == pytest.approx(expected, abs=1e-9)


class TestWindowPeak:
    def test_nothing_recorded_peaks_at_zero(self) -> None:
        """No data, no peak."""
        assert ConcurrencyRecorder().window_peak(50.0, 3) == 0

    def test_momentary_peak_within_the_window(self) -> None:
        """6 in the system for a tenth of a second still counts for the whole window."""
        gw = Gateway()
        gw.level(1)
        gw.clock.advance(0.5)
        gw.level(6)
        gw.clock.advance(0.1)
        gw.level(1)
        gw.clock.advance(2)  # 1002.6: seconds 1000-1002
        assert gw.recorder.window_peak(gw.clock.now(), 3) == 6
        gw.clock.advance(1)  # 1003.6: seconds 1001-1003, 1 carried in
        assert gw.recorder.window_peak(gw.clock.now(), 3) == 1

    def test_level_replaced_at_a_second_boundary_held_no_time(self) -> None:
        """A level that ends exactly as the window's first second starts does not count."""
        gw = Gateway()
        gw.level(4)
        gw.clock.advance(1)
        gw.level(0)  # 1001.0
        gw.clock.advance(2)  # 1003.0: seconds 1001-1003
        assert gw.recorder.window_peak(gw.clock.now(), 3) == 0
        assert gw.recorder.window_peak(gw.clock.now(), 4) == 4  # seconds 1000-1003


def _reference_peak(changes: list[tuple[float, int]], now: float, window_s: float) -> int:
    """Brute force: the largest level set within the window, or in effect at its start."""
    end = int(now) + 1
    start = float(end - math.ceil(window_s))
    inside = [level for t, level in changes if start <= t < end]
    before = [level for t, level in changes if t < start]
    at_start = any(t == start for t, _ in changes)
    carried = before[-1] if before and not at_start else 0
    return max([carried, *inside])


class TestPeakAgainstBruteForce:
    @given(
        steps=st.lists(st.tuples(st.floats(0.0, 30.0), st.integers(0, 50)), min_size=1, max_size=40),
        tail_s=st.floats(0.0, 90.0),
        window_s=st.sampled_from([1, 2.4, 6, 60]),
    )
    def test_window_peak_is_the_largest_level(
        self, steps: list[tuple[float, int]], tail_s: float, window_s: float
    ) -> None:
        """For any change sequence the bucketed peak equals scanning the changes directly."""
        recorder, changes, now = replay(steps, tail_s)
        assert recorder.window_peak(now, window_s) == _reference_peak(changes, now, window_s)


class TestIdleSpells:
    def test_each_level_times_its_own_spells(self) -> None:
        """1 request at 0, none at 1, one again at 3: level 1's spell is 2 s. 2 at 3.5, 1 at 4,
        3 at 6.5: level 2's spell is 2.5 s (4 → 6.5); level 3 never dropped, so has none."""
        recorder = ConcurrencyRecorder()
        for at, level in ((0.0, 1), (1.0, 0), (3.0, 1), (3.5, 2), (4.0, 1), (6.5, 3)):
            recorder.record(at, level)
        assert list(recorder.idle_spells(1)) == [2.0]
        assert list(recorder.idle_spells(2)) == [2.5]
        assert list(recorder.idle_spells(3)) == []

    def test_a_recorder_for_the_kpa_keeps_no_spells_and_the_same_windows(self) -> None:
        """The same changes into a recorder with ``keep_spells=False`` (the KPA reads no spells):
        no spell on any level, and the same 60 s window average: 1 + 0.5 + 2 × 0.5 + 2.5 = 5
        request·seconds over the 7 seconds since the first record."""
        keeping, not_keeping = ConcurrencyRecorder(), ConcurrencyRecorder(keep_spells=False)
        for recorder in (keeping, not_keeping):
            for at, level in ((0.0, 1), (1.0, 0), (3.0, 1), (3.5, 2), (4.0, 1), (6.5, 0)):
                recorder.record(at, level)
        assert list(keeping.idle_spells(1)) == [2.0]
        assert [list(not_keeping.idle_spells(n)) for n in (1, 2)] == [[], []]
        assert not_keeping.window_average(6.5, 60) == keeping.window_average(6.5, 60) == 5 / 7

    def test_a_drop_of_several_opens_a_spell_per_level(self) -> None:
        """3 → 0 at 1, back to 3 at 2: one 1 s spell on each of levels 1-3; levels past the 16
        kept have none (asking is not an error)."""
        recorder = ConcurrencyRecorder()
        for at, level in ((0.0, 3), (1.0, 0), (2.0, 3)):
            recorder.record(at, level)
        assert [list(recorder.idle_spells(n)) for n in (1, 2, 3, 4)] == [[1.0], [1.0], [1.0], []]
        assert list(recorder.idle_spells(17)) == []

    def test_a_spells_quantile_follows_new_spells(self) -> None:
        """Spells of 1, 2, …, 10 s on level 1: the p90 is 9 s (nearest rank), None while fewer
        than 11 are asked for; an 11th spell of 20 s makes it 10 s (the cached answer is not
        kept past a new spell)."""
        recorder = ConcurrencyRecorder()
        at = 0.0
        for gap in range(1, 11):
            recorder.record(at, 1)
            recorder.record(at + 0.5, 0)
            at += 0.5 + gap
        recorder.record(at, 1)
        assert list(recorder.idle_spells(1)) == [float(g) for g in range(1, 11)]
        assert recorder.idle_spell_quantile(1, 0.9, 10) == 9.0
        assert recorder.idle_spell_quantile(1, 0.9, 11) is None
        assert recorder.idle_spell_quantile(2, 0.9, 1) is None
        recorder.record(at + 0.5, 0)
        recorder.record(at + 20.5, 1)
        assert recorder.idle_spell_quantile(1, 0.9, 10) == 10.0

    def test_the_quantiles_of_many_levels_follow_each_levels_spells(self) -> None:
        """Levels 1-3 as one tuple: 1 s spells on levels 1 and 2 (2 → 0 at 0.5, back at 1.5),
        none on level 3, then a 3 s spell on level 1 alone (1 → 0 at 2, back at 5): medians 1 s
        and 1 s, and level 2 has too few for at least 2. Then 201 spells of 0.25 s on level 1
        push its first two out of the 200 kept: level 1's median and maximum are 0.25 s, level
        2's median is still 1 s (its answer is not lost when another level's changes)."""
        recorder = ConcurrencyRecorder()
        levels = range(1, 4)
        for at, level in ((0.0, 2), (0.5, 0), (1.5, 2), (1.75, 1), (2.0, 0), (5.0, 1)):
            recorder.record(at, level)
        assert recorder.idle_spell_quantiles(levels, 0.5, 1) == (1.0, 1.0, None)
        assert recorder.idle_spell_quantiles(levels, 0.5, 2) == (1.0, None, None)
        at = 5.0
        for _ in range(201):
            recorder.record(at + 0.5, 0)
            at += 0.75
            recorder.record(at, 1)
        assert recorder.idle_spell_quantiles(levels, 0.5, 1) == (0.25, 1.0, None)
        assert recorder.idle_spell_quantiles(levels, 1.0, 1) == (0.25, 1.0, None)
        assert recorder.idle_spell_quantile(1, 1.0, 1) == 0.25  # the 1 and 3 s spells are gone
