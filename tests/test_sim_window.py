"""PrefixRecorder answers exactly as the server's ConcurrencyRecorder, on random histories."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.sim.window import PrefixRecorder

# (gap in seconds since the previous record, new level or None for an arrival)
steps = st.lists(st.tuples(st.sampled_from([0.0, 0.001, 0.3, 0.5, 0.999, 1.0, 2.5, 7.0, 61.0, 130.0]),
                           st.one_of(st.none(), st.integers(0, 5))), min_size=1, max_size=80)


def replay(recorders: tuple[ConcurrencyRecorder, ...], history: list[tuple[float, int | None]]) -> float:
    t = 1000.0
    for gap, level in history:
        t += gap
        for recorder in recorders:
            if level is None:
                recorder.record_request(t)
            else:
                recorder.record(t, level)
    return t


class TestPrefixRecorder:
    @settings(max_examples=300, deadline=None)
    @given(history=steps, later=st.sampled_from([0.0, 0.2, 1.0, 3.7, 59.0, 200.0]),
           window_s=st.sampled_from([1.0, 6.0, 6.5, 60.0, 100.0]))
    def test_same_average(self, history: list[tuple[float, int | None]], later: float,
                          window_s: float) -> None:
        """Same value (to float rounding), and exactly 0 whenever the original says 0."""
        original, fast = ConcurrencyRecorder(retention_s=100), PrefixRecorder(retention_s=100)
        now = replay((original, fast), history) + later
        expected = original.window_average(now, window_s)
        got = fast.window_average(now, window_s)
        assert (got == 0) == (expected == 0)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)

    @settings(max_examples=100, deadline=None)
    @given(history=steps, later=st.sampled_from([0.0, 0.2, 1.0, 3.7, 59.0, 200.0]),
           window_s=st.sampled_from([1.0, 6.0, 6.5, 60.0, 100.0]))
    def test_same_rate_and_peak(self, history: list[tuple[float, int | None]], later: float,
                                window_s: float) -> None:
        """The KPA's rps metric and the keep-alive policy's peak read the same from both."""
        original, fast = ConcurrencyRecorder(retention_s=100), PrefixRecorder(retention_s=100)
        now = replay((original, fast), history) + later
        assert fast.rate(now, window_s) == original.rate(now, window_s)
        assert fast.window_peak(now, window_s) == original.window_peak(now, window_s)
        assert fast.has_data == original.has_data

    def test_rejects_the_same_windows(self) -> None:
        with pytest.raises(ValueError, match="window_s must be within"):
            PrefixRecorder(retention_s=10).window_average(0.0, 11)

    def test_empty(self) -> None:
        assert PrefixRecorder().window_average(5.0, 60) == 0.0

    def test_long_history_trimmed(self) -> None:
        """Past retention_s + 2 × 4096 buckets old sums are dropped; answers stay the same."""
        original, fast = ConcurrencyRecorder(retention_s=10), PrefixRecorder(retention_s=10)
        history = [(1.0 + (n % 3) * 0.4, (n * 7) % 4 if n % 5 else None) for n in range(9000)]
        now = replay((original, fast), history)
        for later, window_s in ((0.0, 10), (0.5, 6), (4.0, 3), (30.0, 10)):
            assert fast.window_average(now + later, window_s) == pytest.approx(
                original.window_average(now + later, window_s), rel=1e-9, abs=1e-12)
        assert len(fast._seconds) <= 10 + 2 * 4096
