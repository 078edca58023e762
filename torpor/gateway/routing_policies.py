"""Routing policies: which instance with free capacity gets the next request.

Chosen by name (``routing.policy``) from a registry with exactly one default. Every policy sees only
endpoints that accept traffic and have a free slot, and prefers provisioned instances (seed 000:
requests go to provisioned instances first, then on-demand ones).

``choose`` runs once per request on the hot path, so it allocates nothing: it scans the endpoint list
in place (one pass for least_outstanding and first_available, two for the others) instead of building
filtered lists.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar


class Candidate(Protocol):
    in_flight: int
    capacity: int
    provisioned: bool

    @property
    def accepting(self) -> bool: ...


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
        """The endpoint for the next request, or None when no endpoint has a free slot."""
        raise NotImplementedError


def _count_free(endpoints: Sequence[Candidate]) -> tuple[int, bool]:
    """How many endpoints a policy may pick from, and whether those are the provisioned ones only."""
    free = provisioned = 0
    for e in endpoints:
        if e.accepting and e.in_flight < e.capacity:
            free += 1
            if e.provisioned:
                provisioned += 1
    return (provisioned, True) if provisioned else (free, False)


def _nth_free(endpoints: Sequence[C], n: int, provisioned_only: bool) -> C:
    """The ``n``-th (from 0) endpoint counted by :func:`_count_free`."""
    for e in endpoints:
        if e.accepting and e.in_flight < e.capacity and (e.provisioned or not provisioned_only):
            if n == 0:
                return e
            n -= 1
    raise IndexError(n)


class LeastOutstanding(RoutingPolicy, name="least_outstanding", default=True):
    """Fewest requests in flight; ties go to the earliest endpoint (stable, cache-friendly)."""

    def choose(self, endpoints: Sequence[C]) -> C | None:
        best: C | None = None
        best_provisioned: C | None = None
        for e in endpoints:
            if e.in_flight < e.capacity and e.accepting:  # (a full one is the usual skip)
                if e.provisioned:
                    if best_provisioned is None or e.in_flight < best_provisioned.in_flight:
                        best_provisioned = e
                elif best is None or e.in_flight < best.in_flight:
                    best = e
        return best_provisioned if best_provisioned is not None else best


class RoundRobin(RoutingPolicy, name="round_robin"):
    """Each request to the next endpoint in turn."""

    def __init__(self) -> None:
        self._next = 0

    def choose(self, endpoints: Sequence[C]) -> C | None:
        count, provisioned_only = _count_free(endpoints)
        if count == 0:
            return None
        chosen = _nth_free(endpoints, self._next % count, provisioned_only)
        self._next += 1
        return chosen


class PowerOfTwo(RoutingPolicy, name="power_of_two"):
    """Two endpoints at random, the less loaded of them (Mitzenmacher's power of two choices)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, endpoints: Sequence[C]) -> C | None:
        count, provisioned_only = _count_free(endpoints)
        if count <= 1:
            return None if count == 0 else _nth_free(endpoints, 0, provisioned_only)
        # The same two draws as ``rng.sample(free, 2)``, without building ``free``: the second index
        # is drawn from the other count - 1 and the last one stands in for the first pick.
        i = self._rng.randrange(count)
        j = self._rng.randrange(count - 1)
        a = _nth_free(endpoints, i, provisioned_only)
        b = _nth_free(endpoints, j if j != i else count - 1, provisioned_only)
        return a if a.in_flight <= b.in_flight else b


class FirstAvailable(RoutingPolicy, name="first_available"):
    """The first endpoint with a free slot: packs load onto few instances so others can idle."""

    def choose(self, endpoints: Sequence[C]) -> C | None:
        first: C | None = None
        for e in endpoints:
            if e.accepting and e.in_flight < e.capacity:
                if e.provisioned:
                    return e
                if first is None:
                    first = e
        return first
