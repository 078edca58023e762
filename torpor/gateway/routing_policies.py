"""Routing policies: which instance with free capacity gets the next request.

Chosen by name (``routing.policy``) from a registry with exactly one default. Every policy sees only
endpoints that accept traffic and have a free slot, and prefers provisioned instances (seed 000:
requests go to provisioned instances first, then on-demand ones).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar


class Candidate(Protocol):
    in_flight: int
    capacity: int
    provisioned: bool
    accepting: bool


C = TypeVar("C", bound=Candidate)


class RoutingPolicy:
    registry: ClassVar[dict[str, type[RoutingPolicy]]] = {}
    default_name: ClassVar[str | None] = None
    name: ClassVar[str]

    def __init_subclass__(cls, name: str, default: bool = False, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = name
        RoutingPolicy.registry[name] = cls
        if default:
            assert RoutingPolicy.default_name is None, "one default routing policy only"
            RoutingPolicy.default_name = name

    @classmethod
    def make(cls, name: str | None = None) -> RoutingPolicy:
        chosen = name or cls.default_name
        if chosen not in cls.registry:
            valid = ", ".join(sorted(cls.registry))
            raise ValueError(f"unknown routing policy {chosen!r}; valid policies: {valid}")
        return cls.registry[chosen]()

    def choose(self, endpoints: Sequence[C]) -> C | None:
        free = [e for e in endpoints if e.accepting and e.in_flight < e.capacity]
        if not free:
            return None
        provisioned = [e for e in free if e.provisioned]
        return self.pick(provisioned or free)

    def pick(self, free: Sequence[C]) -> C:
        raise NotImplementedError


class LeastOutstanding(RoutingPolicy, name="least_outstanding", default=True):
    """Fewest requests in flight; ties go to the earliest endpoint (stable, cache-friendly)."""

    def pick(self, free: Sequence[C]) -> C:
        return min(free, key=lambda e: e.in_flight)


class RoundRobin(RoutingPolicy, name="round_robin"):
    """Each request to the next endpoint in turn."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, free: Sequence[C]) -> C:
        chosen = free[self._next % len(free)]
        self._next += 1
        return chosen


class PowerOfTwo(RoutingPolicy, name="power_of_two"):
    """Two endpoints at random, the less loaded of them (Mitzenmacher's power of two choices)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, free: Sequence[C]) -> C:
        if len(free) == 1:
            return free[0]
        a, b = self._rng.sample(list(free), 2)
        return a if a.in_flight <= b.in_flight else b


class FirstAvailable(RoutingPolicy, name="first_available"):
    """The first endpoint with a free slot: packs load onto few instances so others can idle."""

    def pick(self, free: Sequence[C]) -> C:
        return free[0]
