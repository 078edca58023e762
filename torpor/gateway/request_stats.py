"""What the gateway saw, counted cheaply: latency by function and start kind, requests by status.

The gateway hands every finished request to :meth:`RequestStats.observe` (one bisect and three
integer increments, no lock: everything runs on the event loop). ``/metrics`` exports the counts as
Prometheus histograms and counters, and the console's sampler turns the difference between two
snapshots into requests/s and p50/p99 (:func:`quantile`, the same interpolation as PromQL's
``histogram_quantile``). Gateway errors (5xx) are logged with their request id so one request can be
followed from the client's ``x-torpor-request-id`` to the gateway's log and the instance's.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("torpor.gateway")

# Upper bounds in seconds; a last implicit +Inf bucket catches the rest.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                     30.0, 60.0)
QUEUE_WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
START_KINDS = ("cold", "warm", "thawed", "none")  # "none": the gateway answered itself


@dataclass
class Histogram:
    """Cumulative-free bucket counts (``counts[i]`` observations in bucket i) and their sum."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    sum_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum_s += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.sum_s)

    def minus(self, earlier: Histogram) -> Histogram:
        """The observations made since ``earlier`` (a snapshot of this same histogram)."""
        return Histogram(self.bounds, [a - b for a, b in zip(self.counts, earlier.counts, strict=True)],
                         self.sum_s - earlier.sum_s)


def quantile(q: float, histogram: Histogram) -> float | None:
    """The q-quantile by linear interpolation inside its bucket; None with no observations.

    As PromQL's ``histogram_quantile``: rank = q × count; inside bucket (lo, hi] holding n of them,
    answer lo + (hi - lo) × (rank - below) / n. A rank in the +Inf bucket answers the last bound.
    """
    total = histogram.count
    if total == 0:
        return None
    rank = q * total
    below = 0
    lo = 0.0
    for bound, n in zip(histogram.bounds, histogram.counts, strict=False):
        if n and below + n >= rank:
            return lo + (bound - lo) * (rank - below) / n
        below += n
        lo = bound
    return float(histogram.bounds[-1])


class FunctionStats:
    __slots__ = ("latency", "statuses")

    def __init__(self) -> None:
        self.latency = {kind: Histogram(LATENCY_BUCKETS_S) for kind in START_KINDS}
        self.statuses: dict[int, int] = {}

    def all_latency(self) -> Histogram:
        """Every start kind's latency in one histogram."""
        total = Histogram(LATENCY_BUCKETS_S)
        for histogram in self.latency.values():
            total.counts = [a + b for a, b in zip(total.counts, histogram.counts, strict=True)]
            total.sum_s += histogram.sum_s
        return total


def _debug_enabled() -> bool:
    return log.isEnabledFor(logging.DEBUG)  # cached by logging until the levels change


class RequestStats:
    """Per-function request counts; the gateway's :class:`~torpor.gateway.proxy.RequestObserver`."""

    def __init__(self) -> None:
        self.functions: dict[str, FunctionStats] = {}

    def function(self, name: str) -> FunctionStats:
        stats = self.functions.get(name)
        if stats is None:
            stats = self.functions[name] = FunctionStats()
        return stats

    def observe(self, function: str, start: str, status: int, seconds: float, request_id: bytes,
                instance: bytes) -> None:
        """One finished request; ``request_id`` and ``instance`` are header bytes (b"" if none)."""
        stats = self.functions.get(function) or self.function(function)
        stats.latency[start].observe(seconds)
        statuses = stats.statuses
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 500:
            log.warning("request_id=%s function=%s instance=%s status=%d duration_s=%.6f",
                        request_id.decode("latin-1"), function, instance.decode() or "-", status,
                        seconds)
        elif _debug_enabled():
            log.debug("request_id=%s function=%s instance=%s status=%d start=%s duration_s=%.6f",
                      request_id.decode("latin-1"), function, instance.decode() or "-", status, start,
                      seconds)
