"""The autoscaler's metrics window with O(log n) window averages, for long simulations.

:class:`~torpor.autoscaling.metrics.ConcurrencyRecorder` sums the buckets of a window each time the
KPA asks (two windows per decision, up to ``stable_window_s`` buckets each): right for a server that
decides every 2 s, and the larger part of a simulated decision. :class:`PrefixRecorder` *is* that
recorder (recording is inherited, bucket for bucket) and answers ``window_average`` from running sums
kept as each bucket opens: the area of a window is a difference of two prefix sums.

Two facts keep it equal to the original, which ``tests/test_sim_window.py`` checks on random
histories against ``ConcurrencyRecorder`` itself:

- a window whose seconds all carried 0 requests must average exactly 0 (the KPA asks for an instance
  at any load above 0), and a difference of floats need not be 0. The original's sum is 0 exactly
  when the level carried into the window is 0 and no bucket inside it has any area (a bucket with a
  level above 0 always has some: its level holds to the end of its second), so an integer count of
  buckets with area decides that case exactly;
- the window never reaches before the oldest bucket the original keeps (``retention_s``), so keeping
  older sums (trimmed in batches) changes nothing.
"""

from __future__ import annotations

import math
from bisect import bisect_left

from torpor.autoscaling.metrics import DEFAULT_RETENTION_S, ConcurrencyRecorder, _Bucket

_TRIM_BATCH = 4096  # prefix entries dropped at once, so trimming costs O(1) amortised


class PrefixRecorder(ConcurrencyRecorder):
    """A :class:`ConcurrencyRecorder` whose ``window_average`` uses prefix sums."""

    def __init__(self, retention_s: int = DEFAULT_RETENTION_S, *, keep_spells: bool = True) -> None:
        super().__init__(retention_s, keep_spells=keep_spells)
        self._seconds: list[int] = []  # each bucket's second, ascending
        self._opened: list[_Bucket] = []  # the buckets themselves (shared with the deque)
        self._area_before: list[float] = []  # request·seconds of all seconds before that bucket
        self._busy_before: list[int] = []  # how many buckets with any area came before it
        self._newest: _Bucket | None = None  # the last bucket opened

    def record(self, now: float, in_system: int) -> None:
        if in_system < 0:
            raise ValueError(f"in_system cannot be negative, got {in_system}")
        bucket = self._touch_fast(now)
        if in_system != bucket.level and self.keep_spells:
            self._level_changed(now, bucket.level, in_system)
        bucket.level = in_system
        if in_system > bucket.peak:
            bucket.peak = in_system

    def arrived(self, now: float, in_system: int) -> None:
        """``record_request(now)`` then ``record(now, in_system)``: the second touch of the same
        instant changes nothing (its area grows by ``level × 0``), so one does for both."""
        bucket = self._touch_fast(now)
        bucket.requests += 1
        self._last_request_at = bucket.t
        if in_system != bucket.level and self.keep_spells:
            self._level_changed(now, bucket.level, in_system)
        bucket.level = in_system
        if in_system > bucket.peak:
            bucket.peak = in_system

    def _touch_fast(self, now: float) -> _Bucket:
        """``_touch``, with its usual case (a change in the second of the last one) done here."""
        last = self._newest
        if last is not None:
            if now < last.t:
                now = last.t  # as ``_touch``: a late caller is taken as at the last record
            if int(now) == last.second:
                last.area += last.level * (now - last.t)
                last.t = now
                return last
        return self._touch(now)

    def _touch(self, now: float) -> _Bucket:
        bucket = super()._touch(now)
        last = self._newest
        if bucket is not last:
            self._newest = bucket
            if last is not None:
                quiet = bucket.second - last.second - 1  # seconds carrying last.level after it
                full = last.full_area()  # final: no record can land in its second any more
                self._area_before.append(self._area_before[-1] + full + last.level * quiet)
                self._busy_before.append(self._busy_before[-1] + (full > 0))
            else:
                self._area_before.append(0.0)
                self._busy_before.append(0)
            self._seconds.append(bucket.second)
            self._opened.append(bucket)
            if len(self._seconds) > self.retention_s + 2 * _TRIM_BATCH:
                del self._seconds[:_TRIM_BATCH], self._opened[:_TRIM_BATCH]
                del self._area_before[:_TRIM_BATCH], self._busy_before[:_TRIM_BATCH]
        return bucket

    def window_average(self, now: float, window_s: float) -> float:
        """As :meth:`ConcurrencyRecorder.window_average`: seconds ``end - n + 1 .. end``, never
        before the first record, the current second counted whole at its last level."""
        # (``_Bucket.full_area`` written out, the same sums in the same order: the KPA asks for
        # two windows on every decision)
        n = math.ceil(window_s)
        if not 1 <= n <= self.retention_s:
            raise ValueError(f"window_s must be within 1..{self.retention_s} s, got {window_s}")
        first_at = self._first_at
        if first_at is None:
            return 0.0
        opened = self._opened
        last = len(opened) - 1
        newest = opened[last]
        end = int(now if now >= newest.t else newest.t)
        start = end - n + 1
        span = end + 1 - (first_at if first_at > start else start)
        if span <= 0:
            return 0.0
        # the area of all seconds before end + 1 (every bucket opened so far lies before it: the
        # newest is at end's second at most) less the area of those before the window's start
        level = newest.level
        newest_full = newest.area + level * (newest.second + 1 - newest.t)
        area_end = self._area_before[last] + newest_full + level * (end - newest.second)
        carried_from = bisect_left(self._seconds, start) - 1
        if carried_from >= 0:
            bucket = opened[carried_from]
            carried = bucket.level
            area_start = (self._area_before[carried_from]
                          + (bucket.area + carried * (bucket.second + 1 - bucket.t))
                          + carried * (start - bucket.second - 1))
        else:
            carried, area_start = 0, 0.0
        if carried <= 0:
            # nothing carried into the window: buckets carried_from+1 .. last lie inside it; did
            # any hold a request?
            if last <= carried_from:
                return 0.0
            busy = self._busy_before[last] - self._busy_before[carried_from + 1]
            if busy == 0 and not newest_full > 0:
                return 0.0  # nothing was in the system in any second of the window
        area = area_end - area_start
        return (area if area > 0.0 else 0.0) / span
