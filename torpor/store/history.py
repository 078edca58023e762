"""The console's history: per-function samples every few seconds, kept small by compaction.

Retention (one pass every ``COMPACT_EVERY_S``, see :class:`Retention`):

- samples younger than ``fine_s`` (1 h) stay at their own resolution (5 s);
- older ones are merged into ``coarse_s`` (60 s) buckets (:func:`downsample`) until ``keep_s`` (24 h),
  then dropped: at most 720 + 1,380 = 2,100 rows per function;
- events: the newest ``events_per_function`` (1,000) per function, none older than ``events_keep_s``;
- instance records that ended more than ``events_keep_s`` ago go too.

The ledger is not touched: it is the billing record, append-only by design.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, insert, select

from torpor.store import tables
from torpor.store.store import Store


@dataclass(frozen=True)
class Retention:
    fine_s: float = 3600.0
    coarse_s: float = 60.0
    keep_s: float = 86400.0
    events_per_function: int = 1000
    events_keep_s: float = 7 * 86400.0


@dataclass
class Sample:
    """One function over ``[at - resolution_s, at)``: counts are sums, the rest averages."""

    function: str
    at: float
    resolution_s: float
    requests: int = 0
    errors: int = 0  # answered with a 5xx
    p50_s: float | None = None
    p99_s: float | None = None
    queued: float = 0.0
    in_flight: float = 0.0
    desired: float = 0.0
    ready: float = 0.0  # serving instances (ready or busy)
    panic: float = 0.0  # the share of the interval the autoscaler was in panic mode
    states: dict[str, float] = field(default_factory=dict)  # instances by state

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rps"] = round(self.requests / self.resolution_s, 3) if self.resolution_s else 0.0
        return data


_AVERAGED = ("queued", "in_flight", "desired", "ready", "panic")


def downsample(samples: list[Sample], bucket_s: float) -> list[Sample]:
    """Merge samples into ``bucket_s`` buckets, ending on multiples of it.

    Requests and errors add up; gauges and states are averaged over the samples; p50 is the
    request-weighted mean of the p50s and p99 the worst p99 (percentiles do not merge exactly:
    the fine samples are gone, this is the honest summary of them).
    """
    groups: dict[tuple[str, float], list[Sample]] = defaultdict(list)
    for sample in samples:
        end = -(-sample.at // bucket_s) * bucket_s  # ceil: a sample at 61 s ends in bucket (60, 120]
        groups[(sample.function, end)].append(sample)
    out = []
    for (function, end), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        n = len(group)
        merged = Sample(function, end, bucket_s, requests=sum(s.requests for s in group),
                        errors=sum(s.errors for s in group))
        for name in _AVERAGED:
            setattr(merged, name, round(sum(getattr(s, name) for s in group) / n, 3))
        states: dict[str, float] = defaultdict(float)
        for sample in group:
            for state, count in sample.states.items():
                states[state] += count / n
        merged.states = {state: round(count, 3) for state, count in states.items()}
        weighted = [(s.p50_s, s.requests) for s in group if s.p50_s is not None and s.requests]
        if weighted:
            merged.p50_s = sum(p * w for p, w in weighted) / sum(w for _, w in weighted)
        p99s = [s.p99_s for s in group if s.p99_s is not None]
        merged.p99_s = max(p99s) if p99s else None
        out.append(merged)
    return out


def add_samples(store: Store, samples: list[Sample]) -> None:
    if not samples:
        return
    with store.engine.begin() as conn:
        conn.execute(insert(tables.samples), [_row(s) for s in samples])


def samples(store: Store, function: str, since: float) -> list[Sample]:
    t = tables.samples
    query = select(t).where(t.c.function == function, t.c.at > since).order_by(t.c.at)
    with store.engine.connect() as conn:
        return [_sample(row._mapping) for row in conn.execute(query)]


def cold_starts(store: Store, since: float) -> dict[str, int]:
    """Instances that became ready after ``since``, per function (the console's "last hour")."""
    t = tables.instances
    query = (select(t.c.function, func.count()).where(t.c.ready_at.is_not(None), t.c.ready_at >= since)
             .group_by(t.c.function))
    with store.engine.connect() as conn:
        return {row[0]: int(row[1]) for row in conn.execute(query)}


def compact(store: Store, now: float, retention: Retention) -> dict[str, int]:
    """Apply the retention rules; returns how many rows each rule removed or wrote."""
    t = tables.samples
    fine_before = now - retention.fine_s
    keep_after = now - retention.keep_s
    with store.engine.begin() as conn:
        dropped = conn.execute(delete(t).where(t.c.at <= keep_after)).rowcount or 0
        fine = [_sample(row._mapping) for row in conn.execute(
            select(t).where(t.c.at <= fine_before, t.c.resolution_s < retention.coarse_s))]
        merged = downsample(fine, retention.coarse_s)
        if fine:
            conn.execute(delete(t).where(t.c.at <= fine_before, t.c.resolution_s < retention.coarse_s))
            # a bucket may already hold a merged row from the previous pass: merge into it
            existing = {(s.function, s.at): s for s in (
                _sample(row._mapping) for row in conn.execute(select(t).where(
                    t.c.resolution_s >= retention.coarse_s, t.c.at.in_({m.at for m in merged}))))}
            final = []
            for sample in merged:
                old = existing.get((sample.function, sample.at))
                if old is not None:
                    conn.execute(delete(t).where(t.c.function == old.function, t.c.at == old.at,
                                                 t.c.resolution_s == old.resolution_s))
                    sample = downsample([old, sample], retention.coarse_s)[0]
                final.append(sample)
            conn.execute(insert(t), [_row(s) for s in final])
        events = _prune_events(conn, now, retention)
        instances = conn.execute(delete(tables.instances).where(
            tables.instances.c.exited_at < now - retention.events_keep_s)).rowcount or 0
    return {"samples_dropped": int(dropped), "samples_merged": len(fine),
            "samples_written": len(merged), "events_dropped": events,
            "instances_dropped": int(instances)}


def _prune_events(conn: Any, now: float, retention: Retention) -> int:
    t = tables.events
    removed = conn.execute(delete(t).where(t.c.at < now - retention.events_keep_s)).rowcount or 0
    over = conn.execute(select(t.c.function, func.count()).group_by(t.c.function)
                        .having(func.count() > retention.events_per_function)).all()
    for function, _ in over:
        # the id of the oldest event to keep: everything before it in this function goes
        cutoff = conn.execute(select(t.c.id).where(t.c.function == function).order_by(t.c.id.desc())
                              .offset(retention.events_per_function - 1).limit(1)).scalar_one()
        removed += conn.execute(delete(t).where(and_(t.c.function == function, t.c.id < cutoff))
                                ).rowcount or 0
    return int(removed)


def _row(sample: Sample) -> dict[str, Any]:
    data = asdict(sample)
    return {"function": data.pop("function"), "at": data.pop("at"),
            "resolution_s": data.pop("resolution_s"), "data_json": json.dumps(data)}


def _sample(row: Any) -> Sample:
    return Sample(function=row["function"], at=row["at"], resolution_s=row["resolution_s"],
                  **json.loads(row["data_json"]))
