"""The gateway's request counts: bucket histograms, quantiles, statuses, and 5xx log lines."""

from __future__ import annotations

import logging

import pytest

from torpor.gateway.request_stats import (
    LATENCY_BUCKETS_S,
    Histogram,
    RequestStats,
    quantile,
)


class TestHistogram:
    def test_buckets_are_upper_bounds(self) -> None:
        """A value equal to a bound falls in that bound's bucket (``le``); above all in +Inf."""
        histogram = Histogram((0.1, 1.0))
        for value in (0.1, 0.5, 1.0, 7.0):
            histogram.observe(value)
        assert histogram.counts == [1, 2, 1]
        assert histogram.count == 4
        assert histogram.sum_s == pytest.approx(8.6)

    def test_minus_is_what_happened_since(self) -> None:
        """A snapshot subtracted from the histogram leaves the observations made after it."""
        histogram = Histogram((0.1, 1.0))
        histogram.observe(0.05)
        before = histogram.copy()
        histogram.observe(0.5)
        histogram.observe(0.5)
        delta = histogram.minus(before)
        assert delta.counts == [0, 2, 0] and delta.sum_s == pytest.approx(1.0)


class TestQuantile:
    def test_interpolates_inside_the_bucket(self) -> None:
        """As histogram_quantile: 10 in (0, 0.1]: p50 = 0 + 0.1 × 5/10 = 0.05."""
        histogram = Histogram((0.1, 1.0))
        for _ in range(10):
            histogram.observe(0.07)
        assert quantile(0.5, histogram) == pytest.approx(0.05)

    def test_spans_buckets(self) -> None:
        """8 in (0, 0.1], 2 in (0.1, 1]: p90, rank 9: 0.1 + 0.9 × 1/2 = 0.55."""
        histogram = Histogram((0.1, 1.0))
        for value in [0.05] * 8 + [0.5] * 2:
            histogram.observe(value)
        assert quantile(0.9, histogram) == pytest.approx(0.55)

    def test_empty_and_overflow(self) -> None:
        """No observations: None; a rank in +Inf answers the last bound."""
        histogram = Histogram((0.1, 1.0))
        assert quantile(0.5, histogram) is None
        histogram.observe(9.0)
        assert quantile(0.99, histogram) == 1.0


class TestRequestStats:
    def test_by_function_start_and_status(self) -> None:
        """Latency goes by start kind, statuses are counted per function."""
        stats = RequestStats()
        stats.observe("a", "cold", 200, 0.3, b"r1", b"a-1")
        stats.observe("a", "warm", 200, 0.002, b"r2", b"a-1")
        stats.observe("a", "none", 503, 0.0001, b"r3", b"")
        fn = stats.function("a")
        assert {kind: h.count for kind, h in fn.latency.items()} == {
            "cold": 1, "warm": 1, "thawed": 0, "none": 1}
        assert fn.statuses == {200: 2, 503: 1}
        assert fn.all_latency().count == 3
        assert len(fn.all_latency().counts) == len(LATENCY_BUCKETS_S) + 1

    def test_errors_are_logged_with_the_request_id(self, caplog: pytest.LogCaptureFixture) -> None:
        """A 5xx leaves one warning naming the request id, function, instance and status."""
        stats = RequestStats()
        with caplog.at_level(logging.INFO, logger="torpor.gateway"):
            stats.observe("a", "warm", 200, 0.01, b"ok-id", b"a-1")
            stats.observe("a", "warm", 502, 0.01, b"bad-id", b"a-1")
        assert [r.getMessage() for r in caplog.records] == [
            "request_id=bad-id function=a instance=a-1 status=502 duration_s=0.010000"]
