"""Every ``SAMPLE_S`` seconds, one :class:`~torpor.store.history.Sample` per function for the console.

The sampler reads the gateway's request counts and each function's in-memory state (no work on the
request path), writes the samples through the store's writer thread and keeps the last minute in
memory for the console's overview (requests/s, p50/p99 over the last minute). Every
``COMPACT_EVERY_S`` it applies the retention rules of :mod:`torpor.store.history`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torpor.gateway.request_stats import Histogram, RequestStats, quantile
from torpor.lifecycle.state import InstanceState
from torpor.store import history
from torpor.store.history import Retention, Sample

if TYPE_CHECKING:
    from torpor.platform import Platform

log = logging.getLogger(__name__)

SAMPLE_S = float(os.environ.get("TORPOR_HISTORY_SAMPLE_S", "5"))  # tests sample faster
COMPACT_EVERY_S = 300.0
OVERVIEW_WINDOW_S = 60.0
_SERVING = (InstanceState.READY, InstanceState.BUSY)


@dataclass(frozen=True)
class Snapshot:
    at: float
    latency: Histogram
    errors: int


@dataclass(frozen=True)
class Recent:
    """Requests/s and latency percentiles over the last minute (None: no request in it)."""

    rps: float
    p50_s: float | None
    p99_s: float | None


class Sampler:
    def __init__(self, platform: Platform, stats: RequestStats, retention: Retention | None = None,
                 sample_s: float = SAMPLE_S) -> None:
        self.platform = platform
        self.stats = stats
        self.retention = retention or Retention()
        self.sample_s = sample_s
        self._snapshots: dict[str, deque[Snapshot]] = {}
        self._task: asyncio.Task[None] | None = None
        self._last_compact = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="history sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        clock, store = self.platform.clock, self.platform.store
        while True:
            try:
                self.platform.store.submit(history.add_samples, store, self.sample(clock.now()))
                if clock.now() - self._last_compact >= COMPACT_EVERY_S:
                    self._last_compact = clock.now()
                    removed = await store.run(history.compact, store, clock.now(), self.retention)
                    log.debug("history compacted: %s", removed)
            except Exception:
                log.exception("history sample failed")
            await clock.sleep(self.sample_s)

    def sample(self, now: float) -> list[Sample]:
        """One sample per function since the previous call (the first call only takes a baseline)."""
        out = []
        for name, fn in self.platform.functions.items():
            stats = self.stats.function(name)
            snapshot = Snapshot(now, stats.all_latency(),
                                sum(n for status, n in stats.statuses.items() if status >= 500))
            ring = self._snapshots.setdefault(name, deque())
            previous = ring[-1] if ring else None
            ring.append(snapshot)
            while len(ring) > 2 and now - ring[1].at >= OVERVIEW_WINDOW_S:
                ring.popleft()
            if previous is None or now <= previous.at:
                continue
            delta = snapshot.latency.minus(previous.latency)
            states = {state.value: 0.0 for state in InstanceState if state not in (
                InstanceState.STOPPED, InstanceState.FAILED)}
            for instance in fn.instances.values():
                if instance.state.value in states:
                    states[instance.state.value] += 1
            out.append(Sample(
                function=name, at=now, resolution_s=round(now - previous.at, 3),
                requests=delta.count, errors=snapshot.errors - previous.errors,
                p50_s=quantile(0.5, delta), p99_s=quantile(0.99, delta),
                queued=float(fn.route.queued), in_flight=float(fn.route.in_flight),
                desired=float(fn.decision.desired),
                ready=float(sum(1 for i in fn.live() if i.state in _SERVING)),
                panic=1.0 if fn.decision.panic else 0.0, states=states,
            ))
        for name in list(self._snapshots):
            if name not in self.platform.functions:
                del self._snapshots[name]
        return out

    def recent(self, name: str, now: float) -> Recent:
        """Over the last minute, from the oldest snapshot kept to the counts as they are now."""
        ring = self._snapshots.get(name)
        current = self.stats.function(name).all_latency()
        if not ring or now <= ring[0].at:
            return Recent(0.0, None, None)
        delta = current.minus(ring[0].latency)
        return Recent(round(delta.count / (now - ring[0].at), 3), quantile(0.5, delta),
                      quantile(0.99, delta))
