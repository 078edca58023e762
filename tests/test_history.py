"""The console's history: downsampling and the retention rules that keep the store bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from torpor.store import Store, history, tables
from torpor.store.history import Retention, Sample

HOUR_S = 3600.0
NOW = 1_000_020.0  # a multiple of 60: minute buckets line up with the hour


def make_sample(at: float, function: str = "f", **overrides: Any) -> Sample:
    fields: dict[str, Any] = {"resolution_s": 5.0, "requests": 10, "ready": 1.0,
                              "states": {"ready": 1.0}, "p50_s": 0.01, "p99_s": 0.1}
    return Sample(function=function, at=at, **{**fields, **overrides})


@pytest.fixture
def store(store_target: Path | str) -> Iterator[Store]:
    """A store on SQLite, then on PostgreSQL."""
    store = Store(store_target)
    yield store
    store.close()


def count(store: Store, table: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


class TestDownsample:
    def test_sums_counts_and_averages_gauges(self) -> None:
        """Twelve 5 s samples make one 60 s bucket: requests add up, gauges average."""
        samples = [make_sample(5.0 * i, ready=float(i % 2), requests=i) for i in range(1, 13)]
        [merged] = history.downsample(samples, 60.0)
        assert merged.at == 60.0 and merged.resolution_s == 60.0
        assert merged.requests == sum(range(1, 13))  # 78
        assert merged.ready == 0.5
        assert merged.states == {"ready": 1.0}
        assert merged.to_json()["rps"] == 1.3  # 78 / 60

    def test_percentiles(self) -> None:
        """p50: request-weighted mean (10 × 0.01 + 30 × 0.03) / 40 = 0.025; p99: the worst."""
        samples = [make_sample(10, requests=10, p50_s=0.01, p99_s=0.2),
                   make_sample(20, requests=30, p50_s=0.03, p99_s=0.1),
                   make_sample(30, requests=0, p50_s=None, p99_s=None)]
        [merged] = history.downsample(samples, 60.0)
        assert merged.p50_s == pytest.approx(0.025)
        assert merged.p99_s == 0.2

    def test_buckets_per_function(self) -> None:
        """Buckets end on multiples of their size and never mix functions."""
        merged = history.downsample([make_sample(59), make_sample(61), make_sample(61, "g")], 60.0)
        assert [(s.function, s.at) for s in merged] == [("f", 60.0), ("f", 120.0), ("g", 120.0)]


class TestCompact:
    def test_retention_bounds_the_table(self, store: Store) -> None:
        """Two days of 5 s samples: the last hour stays fine, the rest of the day is per minute,
        older is gone."""
        start = NOW - 2 * 86400
        history.add_samples(store, [make_sample(start + 5 * i) for i in range(1, 2 * 17280 + 1)])
        assert count(store, tables.samples) == 34560
        removed = history.compact(store, NOW, Retention())
        # kept: (NOW - 1 day, NOW - 1 h] per minute = 1380 rows, (NOW - 1 h, NOW] every 5 s = 720
        assert count(store, tables.samples) == 1380 + 720
        assert removed["samples_dropped"] == 17280  # everything at or before NOW - 1 day
        rows = history.samples(store, "f", NOW - 86400)
        assert {s.resolution_s for s in rows if s.at <= NOW - HOUR_S} == {60.0}
        assert {s.resolution_s for s in rows if s.at > NOW - HOUR_S} == {5.0}
        coarse = [s for s in rows if s.at <= NOW - HOUR_S]
        assert {s.requests for s in coarse} == {120}  # 12 samples × 10 requests
        # an hour later (no new samples): the 720 fine ones became 60 minutes, the oldest 60 went
        history.compact(store, NOW + HOUR_S, Retention())
        assert count(store, tables.samples) == 1380 - 60 + 60

    def test_merging_into_an_existing_bucket(self, store: Store) -> None:
        """Fine samples that land in a bucket an earlier pass already wrote merge into it."""
        history.add_samples(store, [make_sample(NOW - HOUR_S - 50, requests=1)])
        history.compact(store, NOW, Retention())
        history.add_samples(store, [make_sample(NOW - HOUR_S - 10, requests=2)])
        history.compact(store, NOW + 30, Retention())
        rows = history.samples(store, "f", 0)
        assert [(s.at, s.requests, s.resolution_s) for s in rows] == [(NOW - HOUR_S, 3, 60.0)]

    def test_events_are_capped_per_function(self, store: Store) -> None:
        """The newest ``events_per_function`` stay; events older than events_keep_s go."""
        for i in range(30):
            store.add_event("f", NOW - 30 + i, "scaled", f"e{i}")
        store.add_event("g", NOW - 8 * 86400, "scaled", "ancient")
        removed = history.compact(store, NOW, Retention(events_per_function=10))
        assert removed["events_dropped"] == 21
        assert [e["message"] for e in store.list_events("f", limit=100)] == [
            f"e{i}" for i in range(29, 19, -1)]
        assert store.list_events("g") == []

    def test_ended_instances_age_out(self, store: Store) -> None:
        """Instance records that ended more than events_keep_s ago are removed; live ones stay."""
        base = {"function": "f", "revision": 1, "state": "stopped"}
        store.save_instance({**base, "id": "old", "started_at": 0.0, "exited_at": 1.0})
        store.save_instance({**base, "id": "recent", "started_at": NOW - 10, "exited_at": NOW - 5})
        store.save_instance({**base, "id": "live", "started_at": 0.0, "state": "ready"})
        history.compact(store, NOW, Retention(events_keep_s=86400))
        assert sorted(r["id"] for r in store.list_instances()) == ["live", "recent"]


class TestColdStarts:
    def test_ready_since(self, store: Store) -> None:
        """Cold starts per function: instances that became ready after ``since``."""
        base = {"revision": 1, "state": "ready", "started_at": 0.0}
        store.save_instance({**base, "id": "a", "function": "f", "ready_at": NOW - 10})
        store.save_instance({**base, "id": "b", "function": "f", "ready_at": NOW - 7200})
        store.save_instance({**base, "id": "c", "function": "g", "ready_at": None})
        assert history.cold_starts(store, NOW - HOUR_S) == {"f": 1}
