"""Priority pools (seed 004): config, choice of pool, scale-in order, restrictions, as timelines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from torpor.clock import FakeClock
from torpor.placement.pools import (
    DEFAULT_POOL,
    Attempt,
    Placed,
    Pool,
    PoolConfigError,
    check_restriction,
    fits,
    parse_pools,
    placement_attempts,
    pool_of,
    pools_by_priority,
    scale_in_order,
)

POOLS = (Pool("onprem", 10), Pool("cloud", 1, elastic=True))
CPU1 = {"CPU": 1.0}


def make_pools(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(e) for e in entries] or [{"name": "onprem", "priority": 10},
                                          {"name": "cloud", "priority": 1, "elastic": True}]


class TestParsePools:
    def test_sorted_by_priority(self) -> None:
        """Pools come back highest priority first, whatever their order in the file."""
        pools = parse_pools(make_pools({"name": "cloud", "priority": 1, "elastic": True},
                                       {"name": "onprem", "priority": 10}))
        assert pools == (Pool("onprem", 10, False), Pool("cloud", 1, True))

    def test_absent_means_default(self) -> None:
        """No pools configured: every node is in ``default``."""
        assert parse_pools(None) == (Pool(DEFAULT_POOL, 0, False),)

    @pytest.mark.parametrize(("raw", "message"), [
        ("onprem", "pools: must be a non-empty list"),
        ([], "pools: must be a non-empty list"),
        (["onprem"], "pools[0]: must be a mapping"),
        ([{"name": "Onprem"}], "pools[0].name: must be"),
        ([{"priority": 1}], "pools[0].name: must be"),
        ([{"name": "a"}, {"name": "b", "priority": "high"}], "pools[1].priority: must be an integer"),
        ([{"name": "a", "priority": True}], "pools[0].priority: must be an integer"),
        ([{"name": "a", "elastic": "yes"}], "pools[0].elastic: must be true or false"),
        ([{"name": "a", "weight": 3}], "pools[0].weight: unknown field"),
        ([{"name": "a"}, {"name": "a"}], "pools[1].name: pool 'a' is listed twice"),
        ([{"name": "a", "elastic": True}, {"name": "b", "elastic": True}],
         "pools: at most one pool may be elastic"),
    ])
    def test_errors_name_the_field(self, raw: Any, message: str) -> None:
        """Each invalid entry fails with a message that starts with the field's path."""
        with pytest.raises(PoolConfigError) as err:
            parse_pools(raw)
        assert str(err.value).startswith(message)


class TestRestriction:
    def test_known_pools_pass(self) -> None:
        """A restriction to configured pools is kept as given."""
        assert check_restriction(["onprem"], POOLS) == ("onprem",)

    def test_unknown_pool_names_the_field(self) -> None:
        """An unknown pool is an error naming placement.pools and its index."""
        with pytest.raises(PoolConfigError) as err:
            check_restriction(["onprem", "edge"], POOLS)
        assert str(err.value) == "placement.pools[1]: unknown pool 'edge'; pools: cloud, onprem"


class TestPoolsByPriority:
    def test_all_pools_best_first(self) -> None:
        """Without a restriction every pool is tried, highest priority first."""
        assert pools_by_priority({"cloud": 1, "onprem": 10, "spot": 0}) == ("onprem", "cloud", "spot")

    def test_restriction_keeps_the_priority_order(self) -> None:
        """placement.pools narrows the choice; the priorities still order it."""
        assert pools_by_priority({"cloud": 1, "onprem": 10, "spot": 0},
                                 ["spot", "onprem"]) == ("onprem", "spot")


class TestPoolOf:
    def test_pool_resource(self) -> None:
        """A node's pool is its ``pool:P`` resource; placement-group copies are ignored."""
        assert pool_of({"CPU": 2, "pool:onprem_group_0_abc": 0.001, "pool:onprem": 1000}) == "onprem"

    def test_no_pool_resource(self) -> None:
        """A node without a pool resource is in ``default``."""
        assert pool_of({"CPU": 2, "memory": 1e9}) == DEFAULT_POOL


class TestFits:
    def test_fits_exactly(self) -> None:
        """Demand equal to what is free fits; a missing resource does not."""
        assert fits({"CPU": 1.0, "GPU": 0.25}, {"CPU": 1.0, "GPU": 0.25})
        assert not fits({"CPU": 1.0, "GPU": 0.25}, {"CPU": 4.0})
        assert fits({"CPU": 1.0, "GPU": 0.0}, {"CPU": 1.0})


class TestPlacementAttempts:
    def test_onprem_first_when_it_has_room(self) -> None:
        """Room in onprem: try onprem briefly, then wait on the elastic cloud pool."""
        free = [("onprem", {"CPU": 1.0}), ("cloud", {"CPU": 2.0})]
        assert placement_attempts(POOLS, CPU1, free) == [Attempt("onprem", False), Attempt("cloud", True)]

    def test_onprem_full_waits_on_elastic(self) -> None:
        """Onprem full: straight to the elastic pool, waiting (its demand grows it)."""
        free = [("onprem", {"CPU": 0.5})]
        assert placement_attempts(POOLS, CPU1, free) == [Attempt("cloud", True)]

    def test_restricted_without_elastic_waits_on_best(self) -> None:
        """Restricted to onprem and onprem full: wait on onprem rather than fail at once."""
        assert placement_attempts(POOLS, CPU1, [("onprem", {})], allowed=["onprem"]) == [
            Attempt("onprem", True)]

    def test_no_elastic_pool(self) -> None:
        """Fixed pools only: each with room in priority order, then wait on the best."""
        pools = (Pool("a", 5), Pool("b", 3), Pool("c", 1))
        free = [("c", CPU1), ("b", CPU1)]
        assert placement_attempts(pools, CPU1, free) == [
            Attempt("b", False), Attempt("c", False), Attempt("a", True)]

    def test_allowed_none_configured(self) -> None:
        """A restriction matching no pool gives nothing to try."""
        assert placement_attempts(POOLS, CPU1, [], allowed=["edge"]) == []


class TestScaleInOrder:
    def test_lowest_priority_then_newest(self) -> None:
        """Cloud instances go first, newest first; then onprem, newest first."""
        placed = [Placed("on1", "onprem", 1.0), Placed("on2", "onprem", 2.0),
                  Placed("cl1", "cloud", 3.0), Placed("cl2", "cloud", 4.0)]
        assert scale_in_order(placed, POOLS) == ["cl2", "cl1", "on2", "on1"]


@dataclass
class Cluster:
    """Nodes as pools of CPUs, placing through the pure functions on a fake clock."""

    capacity: dict[str, float]
    clock: FakeClock = field(default_factory=lambda: FakeClock(100.0))
    placed: list[Placed] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    def free(self) -> list[tuple[str, dict[str, float]]]:
        used = {pool: 0.0 for pool in self.capacity}
        for p in self.placed:
            used[p.pool] += 1.0
        return [(pool, {"CPU": cap - used[pool]}) for pool, cap in self.capacity.items()]

    def start(self, instance_id: str) -> str:
        for attempt in placement_attempts(POOLS, CPU1, self.free()):
            room = dict(self.free()).get(attempt.pool, {})
            if fits(CPU1, room):
                self.placed.append(Placed(instance_id, attempt.pool, self.clock.now()))
                return attempt.pool
            if attempt.wait:
                self.waiting.append(instance_id)
                return f"waiting on {attempt.pool}"
        return "nowhere"

    def scale_in(self, count: int) -> list[str]:
        victims = scale_in_order(self.placed, POOLS)[:count]
        self.placed = [p for p in self.placed if p.instance_id not in victims]
        return victims


class TestBurstTimeline:
    def test_burst_then_quiet(self) -> None:
        """Burst fills onprem (2 CPUs) then cloud; quiet removes cloud newest-first, then onprem."""
        cluster = Cluster({"onprem": 2.0})
        assert cluster.start("i1") == "onprem"
        cluster.clock.advance(1)
        assert cluster.start("i2") == "onprem"
        cluster.clock.advance(1)
        assert cluster.start("i3") == "waiting on cloud"  # onprem full: demand for the autoscaler
        cluster.clock.advance(30)  # the autoscaler adds a 2-CPU cloud node
        cluster.capacity["cloud"] = 2.0
        assert cluster.start("i3") == "cloud"
        cluster.clock.advance(1)
        assert cluster.start("i4") == "cloud"
        cluster.clock.advance(60)  # traffic falls: scale in one at a time
        assert cluster.scale_in(1) == ["i4"]
        assert cluster.scale_in(1) == ["i3"]  # cloud empty now: Ray may release its node
        assert cluster.scale_in(1) == ["i2"]
        assert [p.instance_id for p in cluster.placed] == ["i1"]


class TestSpecPlacement:
    def test_spec_restriction_checked_against_pools(self) -> None:
        """``placement.pools`` parses in the spec; an unknown pool fails naming the field."""
        from torpor.spec import FunctionSpec

        spec = FunctionSpec.model_validate({"name": "f", "runtime": {"handler": "m:C"},
                                            "placement": {"pools": ["onprem", "gpu"]}})
        assert spec.placement.pools == ["onprem", "gpu"]
        with pytest.raises(PoolConfigError, match=r"^placement.pools\[1\]: unknown pool 'gpu'"):
            check_restriction(spec.placement.pools, POOLS)

    def test_spec_rejects_duplicates(self) -> None:
        """A pool listed twice is a spec error naming placement.pools."""
        from torpor.errors import SpecError
        from torpor.spec import parse_spec

        with pytest.raises(SpecError, match=r"placement.pools: lists a pool twice"):
            parse_spec({"name": "f", "runtime": {"handler": "json:JSONDecoder"},
                        "placement": {"pools": ["a", "a"]}}, source="torpor.yaml", base_dir=Path("."))
