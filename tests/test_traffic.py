"""Traffic between revisions: the weighted cycle, tags, weights checked naming the field, shifts."""

from __future__ import annotations

from collections import Counter

import pytest

from torpor.clock import FakeClock
from torpor.errors import BadRequest, ColdStartFailed
from torpor.gateway.route import FunctionRoute
from torpor.gateway.traffic import Traffic, TrafficConfig, check_tag, cycle, parse_weights, shift


def make_route(revision: int) -> FunctionRoute:
    return FunctionRoute("fn", clock=FakeClock(), max_queued=10, queue_timeout_s=1.0,
                         timeout_s=1.0, revision=revision)


def make_traffic(weights: dict[int, int], tags: dict[str, int] | None = None) -> Traffic:
    traffic = Traffic("fn")
    routes = {r: make_route(r) for r in {*weights, *(tags or {}).values()}}
    traffic.set(TrafficConfig(weights, tags or {}), routes)
    return traffic


class TestCycle:
    def test_80_20_reduces_to_five_slots_interleaved(self) -> None:
        """80/20 is 4:1: one cycle of five, revision 4 once, never at the start of a burst."""
        assert cycle({3: 80, 4: 20}) == (3, 3, 4, 3, 3)

    def test_zero_weights_are_left_out(self) -> None:
        """A revision at 0 % never appears."""
        assert cycle({1: 0, 2: 100}) == (2,)

    def test_three_way_split_is_exact_per_cycle(self) -> None:
        """50/30/20: 10 slots, exactly 5, 3 and 2."""
        order = cycle({1: 50, 2: 30, 3: 20})
        assert Counter(order) == {1: 5, 2: 3, 3: 2}


class TestPick:
    def test_1000_requests_over_80_20_land_on_the_split(self) -> None:
        """1,000 picks over 80/20: 800 and 200 (within ±5 % is the contract; the cycle is exact)."""
        traffic = make_traffic({3: 80, 4: 20})
        counts = Counter(traffic.pick("").revision for _ in range(1000))  # type: ignore[union-attr]
        assert counts == {3: 800, 4: 200}

    def test_tag_reaches_only_its_revision(self) -> None:
        """@canary always picks revision 4, even at 0 % of the weighted traffic."""
        traffic = make_traffic({3: 100}, {"canary": 4})
        assert {traffic.pick("canary").revision for _ in range(50)} == {4}  # type: ignore[union-attr]
        assert {traffic.pick("").revision for _ in range(50)} == {3}  # type: ignore[union-attr]

    def test_unknown_tag_is_none(self) -> None:
        """An unknown tag finds nothing (the gateway answers 404)."""
        assert make_traffic({3: 100}).pick("nope") is None

    def test_a_single_route_is_its_own_table(self) -> None:
        """A FunctionRoute picks itself for untagged requests and nothing for a tag."""
        route = make_route(1)
        assert route.pick("") is route and route.pick("canary") is None

    def test_aggregates_sum_the_revisions(self) -> None:
        """in_flight, queued and requests are summed over every revision's route."""
        traffic = make_traffic({1: 50, 2: 50})
        traffic.routes[1].requests, traffic.routes[2].requests = 3, 4
        assert traffic.requests == 7 and traffic.in_flight == 0 and traffic.queued == 0

    def test_failure_only_when_every_weighted_revision_fails(self) -> None:
        """The function fails (OIP readiness: 503) only while no weighted revision can start."""
        traffic = make_traffic({1: 50, 2: 50}, {"canary": 3})
        traffic.routes[1].failure = ColdStartFailed("revision 1 cannot start")
        traffic.routes[3].failure = ColdStartFailed("revision 3 cannot start")
        assert traffic.failure is None  # revision 2 serves
        traffic.routes[2].failure = ColdStartFailed("revision 2 cannot start")
        assert traffic.failure is traffic.routes[2].failure

    def test_queue_wait_sums_the_revisions_and_keeps_forgotten_ones(self) -> None:
        """/metrics' queue-wait histogram is every revision's, and never drops a forgotten one's."""
        traffic = make_traffic({1: 50, 2: 50})
        traffic.routes[1].queue_wait.observe(0.2)
        traffic.routes[2].queue_wait.observe(0.4)
        assert traffic.queue_wait.count == 2 and traffic.queue_wait.sum_s == pytest.approx(0.6)
        traffic.set(TrafficConfig({2: 100}), {2: traffic.routes[2]})  # revision 1 forgotten
        assert traffic.queue_wait.count == 2 and traffic.queue_wait.sum_s == pytest.approx(0.6)


class TestWeights:
    def test_valid_weights(self) -> None:
        """String revision keys become ints; weights kept as given."""
        assert parse_weights({"3": 90, "4": 10}, {3, 4}) == {3: 90, 4: 10}

    @pytest.mark.parametrize(("raw", "message"), [
        ({"3": 90, "4": 20}, "traffic: the weights must sum to 100, not 110"),
        ({"3": 90}, "traffic: the weights must sum to 100, not 90"),
        ({"3": 110, "4": -10}, "traffic.3: the weight must be between 0 and 100, not 110"),
        ({"3": 50, "9": 50}, "traffic.9: the function has no revision 9"),
        ({"x": 100}, "traffic.x: 'x' is not a revision number"),
        ({"3": 50.5, "4": 49.5}, "traffic.3: the weight must be a whole percent, not 50.5"),
        ({}, "traffic: give at least one revision=weight"),
    ])
    def test_bad_weights_name_the_field(self, raw: dict[str, object], message: str) -> None:
        """Every bad split is rejected with a sentence naming the field."""
        with pytest.raises(BadRequest) as caught:
            parse_weights(raw, {3, 4})
        assert str(caught.value).startswith(message)

    def test_bad_tag(self) -> None:
        """Tags are DNS-label-like; anything else is rejected naming `tag`."""
        assert check_tag("canary-2") == "canary-2"
        with pytest.raises(BadRequest, match=r"^tag: 'Canary/x'"):
            check_tag("Canary/x")


class TestShift:
    def test_new_revision_at_10_keeps_the_rest_on_the_current_one(self) -> None:
        """deploy --traffic 10 over 3=100: 3=90, 4=10."""
        assert shift({3: 100}, 4, 10) == {3: 90, 4: 10}

    def test_the_rest_is_shared_in_proportion(self) -> None:
        """Over 1=50, 2=50 a new revision at 25 leaves 37/38 (largest remainder, sums to 100)."""
        result = shift({1: 50, 2: 50}, 3, 25)
        assert result[3] == 25 and sum(result.values()) == 100
        assert sorted([result[1], result[2]]) == [37, 38]

    def test_100_takes_everything(self) -> None:
        """At 100 the others drop out of the split."""
        assert shift({3: 90, 4: 10}, 5, 100) == {5: 100}

    def test_out_of_range_share(self) -> None:
        """--traffic 120 is rejected naming traffic."""
        with pytest.raises(BadRequest, match=r"^traffic: the new revision's share"):
            shift({3: 100}, 4, 120)


class TestConfig:
    def test_routed_and_primary(self) -> None:
        """Routed: a weight or a tag; primary: the largest share, the newest of equals."""
        config = TrafficConfig({3: 50, 4: 50, 5: 0}, {"canary": 6})
        assert config.routed == {3, 4, 6}
        assert config.primary == 4

    def test_json_round_trip(self) -> None:
        """Stored as JSON with string keys and zero weights left out."""
        config = TrafficConfig({3: 90, 4: 10, 2: 0}, {"canary": 4})
        data = config.to_json()
        assert data == {"weights": {"3": 90, "4": 10}, "tags": {"canary": 4}}
        assert TrafficConfig.from_json(data) == TrafficConfig({3: 90, 4: 10}, {"canary": 4})
