"""Per-second concurrency and request counts, as Knative's autoscaler sees them.

The gateway knows every change in the number of requests in the system (in flight + queued), so it
records *changes* and the recorder integrates them into one-second buckets. Knative's autoscaler
keeps the same shape (``pkg/autoscaler/aggregation/bucketing.go``): one bucket per second, and a
window average over the last ``ceil(window_s)`` buckets. Two facts carry over:

- the current second is a whole bucket: its level is assumed to hold until the second ends. That is
  what makes a request arriving at a function scaled to zero show up *at once* (1 request for the
  rest of this second is 1/60 over a 60 s window, so the desired count is at least 1), instead of
  after the next tick, and it is what Knative's activator gets by sending a stat the moment a
  request arrives;
- a window that reaches back before the first record counts only from the first record, so a new
  function is not diluted by seconds it did not exist.

Unlike Knative's scraped buckets there are no gaps: a second with no change carries the last level
(the gateway saw nothing change, so the level is known). Only seconds in which something happened
get a bucket, and buckets older than ``retention_s`` are dropped, so memory is O(window) and
``record`` is O(1) amortised with at most one allocation per second.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Sequence

DEFAULT_RETENTION_S = 3600  # the longest stable window ScalingSpec allows
SPELLS_KEPT = 200  # per level: the last idle spells kept (for the keep-alive policy)
SPELL_LEVELS = 16  # levels 1..16 of requests in the system have their idle spells kept


class _Bucket:
    """A second in which something changed; ``area`` is request·seconds from its start to ``t``."""

    __slots__ = ("area", "level", "peak", "requests", "second", "t")

    def __init__(self, second: int, area: float, t: float, level: int, peak: int) -> None:
        self.second = second
        self.area = area
        self.t = t  # time of the last change in this second
        self.level = level  # in-system count after that change, carried until the next bucket
        self.peak = peak  # the most in the system at any moment of this second
        self.requests = 0

    def full_area(self) -> float:
        """Request·seconds over the whole second, the last level held to its end."""
        return self.area + self.level * (self.second + 1 - self.t)


class ConcurrencyRecorder:
    """Time-weighted in-system concurrency and arrivals of one function, per second."""

    def __init__(self, retention_s: int = DEFAULT_RETENTION_S, *, keep_spells: bool = True) -> None:
        """``keep_spells`` False: no idle spells are kept (``idle_spells`` stays empty), for a
        function whose scaling policy never reads them (the KPA's)."""
        if retention_s < 1:
            raise ValueError(f"retention_s must be at least 1, got {retention_s}")
        self.retention_s = retention_s
        self.keep_spells = keep_spells
        self._buckets: deque[_Bucket] = deque()
        self._first_at: float | None = None
        self._last_request_at: float | None = None
        self._dropped_level: int | None = None  # level carried out of the newest dropped bucket
        # level n's idle spell: from the system dropping below n requests to reaching n again
        self._below_since: dict[int, float] = {}
        self._spells: list[deque[float]] = [deque(maxlen=SPELLS_KEPT) for _ in range(SPELL_LEVELS)]
        # the same spells per level in ascending order, kept as each one comes (a quantile is then
        # one index: the keep-alive policy asks for 16 of them on every pass)
        self._ordered: list[list[float]] = [[] for _ in range(SPELL_LEVELS)]
        self._spells_version = 0  # spells added so far, at any level
        self._spells_added = [0] * SPELL_LEVELS  # ... and per level
        # (levels, q, at_least) → (spells version, spells added per level, the quantiles)
        self._quantile_tuples: dict[tuple[range, float, int],
                                    tuple[int, list[int], tuple[float | None, ...]]] = {}

    @property
    def current(self) -> int:
        """Requests in the system right now (in flight + queued)."""
        return self._buckets[-1].level if self._buckets else 0

    @property
    def buckets_held(self) -> int:
        """Seconds kept in memory: at most ``retention_s``, one per second in which something changed."""
        return len(self._buckets)

    @property
    def has_data(self) -> bool:
        """Whether anything was ever recorded (a window before that is no data, not zero)."""
        return self._first_at is not None

    @property
    def last_request_at(self) -> float | None:
        """When the last request arrived, or None if none ever did."""
        return self._last_request_at

    def record(self, now: float, in_system: int) -> None:
        """The number of requests in the system changed to ``in_system`` at ``now``."""
        if in_system < 0:
            raise ValueError(f"in_system cannot be negative, got {in_system}")
        bucket = self._touch(now)
        if in_system != bucket.level and self.keep_spells:
            self._level_changed(now, bucket.level, in_system)
        bucket.level = in_system
        bucket.peak = max(bucket.peak, in_system)

    def _level_changed(self, now: float, before: int, in_system: int) -> None:
        """Idle spells: each level the system drops below starts one, each level it reaches again
        ends one (subclasses that record on their own path call this too)."""
        if in_system < before:
            for level in range(in_system + 1, min(before, SPELL_LEVELS) + 1):
                self._below_since[level] = now
        else:
            for level in range(before + 1, min(in_system, SPELL_LEVELS) + 1):
                since = self._below_since.pop(level, None)
                if since is not None:
                    spell = now - since
                    kept, ordered = self._spells[level - 1], self._ordered[level - 1]
                    if len(kept) == SPELLS_KEPT:  # the oldest leaves both
                        del ordered[bisect_left(ordered, kept[0])]
                    kept.append(spell)
                    insort(ordered, spell)
                    self._spells_version += 1
                    self._spells_added[level - 1] += 1

    def idle_spells(self, level: int) -> Sequence[float]:
        """The last idle spells of level ``level`` (1..SPELL_LEVELS; none above): each the time
        from the system dropping below ``level`` requests to reaching ``level`` again, e.g. for
        level 1 from emptying to the next request. With requests routed to the earliest instance,
        they are the idle spells of the ``level``-th instance (concurrency 1)."""
        return self._spells[level - 1] if 1 <= level <= SPELL_LEVELS else ()

    def idle_spell_quantile(self, level: int, q: float, at_least: int) -> float | None:
        """The ``q`` quantile (nearest rank: the smallest spell with at least ``q`` of them at or
        below it) of level ``level``'s kept idle spells; None with fewer than ``at_least``. The
        spells are kept sorted as they come, so this is one index, not a sort per decision (the
        keep-alive policy asks on every pass)."""
        if not 1 <= level <= SPELL_LEVELS:
            return None
        ordered = self._ordered[level - 1]
        n = len(ordered)
        if n < at_least or not n:
            return None
        return ordered[min(n - 1, math.ceil(q * n) - 1)]

    def idle_spell_quantiles(self, levels: range, q: float, at_least: int) -> tuple[float | None, ...]:
        """:meth:`idle_spell_quantile` of each level in ``levels``, e.g. ``range(1, 17)``; the same
        tuple until another idle spell ends (a pass with no new spell reuses it)."""
        key = (levels, q, at_least)
        cached = self._quantile_tuples.get(key)
        if cached is None:
            added = [self._spells_added[level - 1] if 1 <= level <= SPELL_LEVELS else 0
                     for level in levels]
            values = tuple(self.idle_spell_quantile(level, q, at_least) for level in levels)
        elif cached[0] == self._spells_version:
            return cached[2]
        else:  # worked out again only for the levels with new spells (mostly level 1 alone)
            added, fresh = cached[1], list(cached[2])
            for k, level in enumerate(levels):
                if 1 <= level <= SPELL_LEVELS and added[k] != self._spells_added[level - 1]:
                    added[k] = self._spells_added[level - 1]
                    fresh[k] = self.idle_spell_quantile(level, q, at_least)
            values = tuple(fresh)
        self._quantile_tuples[key] = (self._spells_version, added, values)
        return values

    def record_request(self, now: float) -> None:
        """A request arrived at ``now`` (counted for ``rate`` and the scale-to-zero grace)."""
        bucket = self._touch(now)
        bucket.requests += 1
        self._last_request_at = bucket.t

    def window_average(self, now: float, window_s: float) -> float:
        """Average in-system concurrency over the last ``ceil(window_s)`` seconds up to ``now``."""
        area, _, span = self._window(now, window_s)
        return area / span if span > 0 else 0.0

    def window_peak(self, now: float, window_s: float) -> int:
        """The most requests in the system at any moment of the same window (0 with no data)."""
        if self._first_at is None:
            return 0
        n = math.ceil(window_s)
        if not 1 <= n <= self.retention_s:
            raise ValueError(f"window_s must be within 1..{self.retention_s} s, got {window_s}")
        start = int(max(now, self._buckets[-1].t)) - n + 1
        peak, has_start = 0, False
        for bucket in reversed(self._buckets):
            if bucket.second < start:
                # Its last level carried into the window, unless the first second has a bucket of
                # its own (whose peak already counts what was carried, if it held at all).
                return peak if has_start else max(peak, bucket.level)
            peak = max(peak, bucket.peak)
            has_start = bucket.second == start
        return peak if has_start else max(peak, self._dropped_level or 0)

    def rate(self, now: float, window_s: float) -> float:
        """Arrivals per second over the same window as ``window_average``."""
        _, requests, span = self._window(now, window_s)
        return requests / span if span > 0 else 0.0

    def _touch(self, now: float) -> _Bucket:
        """The bucket for ``now``, with its area brought up to ``now``; opens one per new second."""
        if not self._buckets:
            self._first_at = now
            bucket = _Bucket(int(now), 0.0, now, 0, 0)
            self._buckets.append(bucket)
            return bucket
        last = self._buckets[-1]
        now = max(now, last.t)  # a late caller is taken as "at the last record", never backwards
        second = int(now)
        if second == last.second:
            last.area += last.level * (now - last.t)
            last.t = now
            return last
        # The seconds between ``last`` and now carried last.level; the new one starts at that level
        # (part of its peak only if it held for a moment of this second).
        carried_peak = last.level if now > second else 0
        bucket = _Bucket(second, last.level * (now - second), now, last.level, carried_peak)
        self._buckets.append(bucket)
        oldest_kept = second - self.retention_s + 1
        while self._buckets[0].second < oldest_kept:
            self._dropped_level = self._buckets.popleft().level
        return bucket

    def _window(self, now: float, window_s: float) -> tuple[float, int, float]:
        """(request·seconds, arrivals, seconds covered) over the window ending with now's second.

        The window is seconds ``end - n + 1 .. end`` with ``n = ceil(window_s)`` (Knative: 60 s of
        1 s buckets = 60 buckets), but it never starts before the first record.
        """
        n = math.ceil(window_s)
        if not 1 <= n <= self.retention_s:
            raise ValueError(f"window_s must be within 1..{self.retention_s} s, got {window_s}")
        if self._first_at is None:
            return 0.0, 0, 0.0
        end = int(max(now, self._buckets[-1].t))
        start = end - n + 1
        area, requests = 0.0, 0
        covered_to = end + 1  # seconds [covered_to, end] are summed
        carried: int | None = None
        for bucket in reversed(self._buckets):
            if bucket.second < start:
                carried = bucket.level
                break
            area += bucket.level * (covered_to - bucket.second - 1)  # quiet seconds after it
            area += bucket.full_area()
            requests += bucket.requests
            covered_to = bucket.second
        if carried is None:
            carried = self._dropped_level  # None: nothing before the first record to count
        if carried is not None:
            area += carried * (covered_to - start)
        # e.g. first record at 100.0, window 60 s asked at 110.2: span = 111 - 100.0 = 11 s
        span = end + 1 - max(start, self._first_at)
        return area, requests, span
