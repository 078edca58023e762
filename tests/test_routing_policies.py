"""Routing policies on hand-built endpoint sets: which endpoint gets the next request."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from torpor.gateway.routing_policies import (
    FirstAvailable,
    LeastOutstanding,
    PowerOfTwo,
    RoundRobin,
    RoutingPolicy,
)

POLICY_NAMES = ["first_available", "least_outstanding", "power_of_two", "round_robin"]


@dataclass
class FakeEndpoint:
    name: str
    in_flight: int = 0
    capacity: int = 1
    provisioned: bool = False
    accepting: bool = True


def make_endpoints(*in_flight: int, capacity: int = 4) -> list[FakeEndpoint]:
    """Endpoints e0, e1, ... with the given requests in flight and room for ``capacity`` each."""
    return [FakeEndpoint(f"e{i}", n, capacity) for i, n in enumerate(in_flight)]


def chosen(policy: RoutingPolicy, endpoints: list[FakeEndpoint]) -> str | None:
    endpoint = policy.choose(endpoints)
    return None if endpoint is None else endpoint.name


class TestLeastOutstanding:
    def test_fewest_in_flight(self) -> None:
        """The endpoint with the fewest requests in flight wins."""
        assert chosen(LeastOutstanding(), make_endpoints(3, 1, 2)) == "e1"

    def test_tie_goes_to_first(self) -> None:
        """Among equally loaded endpoints the earliest wins, every time."""
        policy, endpoints = LeastOutstanding(), make_endpoints(2, 1, 1, 1)
        assert [chosen(policy, endpoints) for _ in range(3)] == ["e1", "e1", "e1"]

    def test_skips_full(self) -> None:
        """A full endpoint is skipped even when it is the least loaded by count."""
        endpoints = [FakeEndpoint("small", 1, capacity=1), FakeEndpoint("big", 3, capacity=8)]
        assert chosen(LeastOutstanding(), endpoints) == "big"

    def test_skips_not_accepting(self) -> None:
        """An endpoint that stopped accepting (draining, frozen) is skipped."""
        endpoints = make_endpoints(0, 2)
        endpoints[0].accepting = False
        assert chosen(LeastOutstanding(), endpoints) == "e1"

    def test_none_when_all_full(self) -> None:
        """With no free slot anywhere there is no choice."""
        assert chosen(LeastOutstanding(), make_endpoints(4, 4, 4)) is None

    def test_none_when_no_endpoints(self) -> None:
        """A function scaled to zero has nothing to choose."""
        assert chosen(LeastOutstanding(), []) is None


class TestProvisionedFirst:
    @pytest.mark.parametrize("name", POLICY_NAMES)
    def test_provisioned_preferred_even_when_busier(self, name: str) -> None:
        """Every policy sends to a free provisioned endpoint before an idle on-demand one."""
        endpoints = [FakeEndpoint("on-demand", 0, 4), FakeEndpoint("provisioned", 3, 4, provisioned=True)]
        assert chosen(RoutingPolicy.make(name), endpoints) == "provisioned"

    @pytest.mark.parametrize("name", POLICY_NAMES)
    def test_on_demand_when_provisioned_full(self, name: str) -> None:
        """Once provisioned endpoints are full, on-demand ones take the overflow."""
        endpoints = [FakeEndpoint("provisioned", 4, 4, provisioned=True), FakeEndpoint("on-demand", 3, 4)]
        assert chosen(RoutingPolicy.make(name), endpoints) == "on-demand"

    def test_round_robin_cycles_through_provisioned_only(self) -> None:
        """While provisioned endpoints have room, round-robin turns among them alone."""
        endpoints = [FakeEndpoint("od", 0, 4), FakeEndpoint("p0", 0, 4, provisioned=True),
                     FakeEndpoint("p1", 0, 4, provisioned=True)]
        policy = RoundRobin()
        assert [chosen(policy, endpoints) for _ in range(4)] == ["p0", "p1", "p0", "p1"]

    def test_power_of_two_samples_provisioned_only(self) -> None:
        """Power of two draws its pair from the free provisioned endpoints, as sample() would."""
        endpoints = [FakeEndpoint("od0", 0, 4), FakeEndpoint("p0", 2, 4, provisioned=True),
                     FakeEndpoint("od1", 0, 4), FakeEndpoint("p1", 1, 4, provisioned=True),
                     FakeEndpoint("p2", 3, 4, provisioned=True)]
        provisioned = [e for e in endpoints if e.provisioned]
        policy, mirror = PowerOfTwo(random.Random(11)), random.Random(11)
        for _ in range(20):
            a, b = mirror.sample(provisioned, 2)
            assert chosen(policy, endpoints) == (a if a.in_flight <= b.in_flight else b).name

    def test_least_outstanding_among_provisioned(self) -> None:
        """Among provisioned endpoints the policy's own rule still applies."""
        endpoints = [
            FakeEndpoint("od", 0, 4),
            FakeEndpoint("p0", 2, 4, provisioned=True),
            FakeEndpoint("p1", 1, 4, provisioned=True),
        ]
        assert chosen(LeastOutstanding(), endpoints) == "p1"


class TestRoundRobin:
    def test_cycles(self) -> None:
        """Requests go to each endpoint in turn, regardless of load."""
        policy, endpoints = RoundRobin(), make_endpoints(3, 0, 1)
        assert [chosen(policy, endpoints) for _ in range(7)] == ["e0", "e1", "e2", "e0", "e1", "e2", "e0"]

    def test_skips_full(self) -> None:
        """A full endpoint drops out of the rotation."""
        policy, endpoints = RoundRobin(), make_endpoints(0, 4, 0)
        assert [chosen(policy, endpoints) for _ in range(4)] == ["e0", "e2", "e0", "e2"]

    def test_none_when_all_full(self) -> None:
        """No free slot, no choice."""
        assert chosen(RoundRobin(), make_endpoints(4, 4)) is None


class TestPowerOfTwo:
    def test_less_loaded_of_its_two_samples(self) -> None:
        """With a seeded generator the choice is the less loaded of the two endpoints it sampled."""
        endpoints = make_endpoints(0, 1, 2, 3)
        policy, mirror = PowerOfTwo(random.Random(7)), random.Random(7)
        for _ in range(20):
            a, b = mirror.sample(endpoints, 2)
            expected = a if a.in_flight <= b.in_flight else b
            assert chosen(policy, endpoints) == expected.name

    def test_never_the_busiest(self) -> None:
        """The most loaded endpoint can never win a pairwise comparison."""
        endpoints = make_endpoints(0, 1, 3, 2)
        policy = PowerOfTwo(random.Random(0))
        assert "e2" not in {chosen(policy, endpoints) for _ in range(200)}

    def test_two_endpoints_always_the_less_loaded(self) -> None:
        """With two endpoints both are sampled, so the less loaded always wins."""
        policy = PowerOfTwo(random.Random(1))
        assert {chosen(policy, make_endpoints(2, 1)) for _ in range(50)} == {"e1"}

    def test_single_free_endpoint(self) -> None:
        """With one free endpoint no sampling happens: that one is chosen."""
        assert chosen(PowerOfTwo(random.Random(3)), make_endpoints(4, 2, 4)) == "e1"

    def test_none_when_all_full(self) -> None:
        """No free slot, no choice."""
        assert chosen(PowerOfTwo(random.Random(3)), make_endpoints(4, 4)) is None


class TestFirstAvailable:
    def test_first_free(self) -> None:
        """The first endpoint with a free slot wins, packing load onto few instances."""
        assert chosen(FirstAvailable(), make_endpoints(4, 3, 0)) == "e1"

    def test_skips_not_accepting(self) -> None:
        """A non-accepting endpoint is passed over even when first."""
        endpoints = make_endpoints(0, 0)
        endpoints[0].accepting = False
        assert chosen(FirstAvailable(), endpoints) == "e1"

    def test_none_when_all_full(self) -> None:
        """No free slot, no choice."""
        assert chosen(FirstAvailable(), make_endpoints(4, 4)) is None


class TestRegistry:
    def test_default_is_least_outstanding(self) -> None:
        """No name means the one default policy, least_outstanding."""
        assert (RoutingPolicy.default_name, type(RoutingPolicy.make())) == (
            "least_outstanding", LeastOutstanding)

    @pytest.mark.parametrize(
        ("name", "cls"),
        [("least_outstanding", LeastOutstanding), ("round_robin", RoundRobin),
         ("power_of_two", PowerOfTwo), ("first_available", FirstAvailable)],
    )
    def test_make_by_name(self, name: str, cls: type[RoutingPolicy]) -> None:
        """Each name builds its policy class."""
        assert type(RoutingPolicy.make(name)) is cls

    def test_fresh_instance_each_time(self) -> None:
        """make returns a new policy, so two functions never share round-robin state."""
        assert RoutingPolicy.make("round_robin") is not RoutingPolicy.make("round_robin")

    def test_unknown_name_lists_valid_ones(self) -> None:
        """An unknown name fails loudly with every valid name, sorted."""
        with pytest.raises(ValueError) as excinfo:
            RoutingPolicy.make("fastest")
        assert str(excinfo.value) == (
            "unknown routing policy 'fastest'; valid policies: "
            "first_available, least_outstanding, power_of_two, round_robin"
        )
