"""A function's traffic: which revision's route each request goes to (by weight, or pinned by a tag).

Every revision has its own :class:`~torpor.gateway.route.FunctionRoute` (its instances, its queue,
its load accounting). :class:`Traffic` sits above them: ``pick("")`` takes the next slot of a
precomputed cycle in which each revision appears ``weight / gcd`` times, interleaved by smooth
weighted round-robin (nginx's), so over every cycle the split is exact and the hot path does one
index and one increment, allocating nothing. ``pick("canary")`` returns the tagged revision's route.

A request keeps the route it was given: changing the split (a rollback) never moves a request that
is already queued or in flight.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torpor.errors import BadRequest, GatewayError
from torpor.gateway.request_stats import QUEUE_WAIT_BUCKETS_S, Histogram
from torpor.gateway.route import FunctionRoute

TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
MAX_TAG_LEN = 63


@dataclass(frozen=True)
class TrafficConfig:
    """Weights per revision (percent, summing to 100) and tags naming one revision each."""

    weights: Mapping[int, int]
    tags: Mapping[str, int] = field(default_factory=dict)

    @property
    def routed(self) -> frozenset[int]:
        """Revisions that can receive a request: a weight above 0, or a tag."""
        return frozenset({r for r, w in self.weights.items() if w > 0} | set(self.tags.values()))

    @property
    def primary(self) -> int:
        """The revision with the largest share (the newest of equals)."""
        return max(self.weights, key=lambda r: (self.weights[r], r))

    def to_json(self) -> dict[str, Any]:
        return {"weights": {str(r): w for r, w in sorted(self.weights.items()) if w > 0},
                "tags": dict(sorted(self.tags.items()))}

    @classmethod
    def only(cls, revision: int, tags: Mapping[str, int] | None = None) -> TrafficConfig:
        return cls({revision: 100}, dict(tags or {}))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrafficConfig:
        """As stored (already checked when it was set)."""
        return cls({int(r): int(w) for r, w in data.get("weights", {}).items()},
                   {str(t): int(r) for t, r in data.get("tags", {}).items()})


def parse_weights(raw: Mapping[str, Any], known: set[int] | frozenset[int]) -> dict[int, int]:
    """``{"3": 90, "4": 10}`` → ``{3: 90, 4: 10}``; every error names its field (``traffic.3``)."""
    if not isinstance(raw, Mapping) or not raw:
        raise BadRequest("traffic: give at least one revision=weight, e.g. {\"3\": 90, \"4\": 10}")
    weights: dict[int, int] = {}
    for key, value in raw.items():
        name = f"traffic.{key}"
        try:
            revision = int(key)
        except (TypeError, ValueError):
            raise BadRequest(f"{name}: {key!r} is not a revision number") from None
        if revision not in known:
            raise BadRequest(f"{name}: the function has no revision {revision}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{name}: the weight must be a whole percent, not {value!r}")
        if not 0 <= value <= 100:
            raise BadRequest(f"{name}: the weight must be between 0 and 100, not {value}")
        weights[revision] = value
    total = sum(weights.values())
    if total != 100:
        raise BadRequest(f"traffic: the weights must sum to 100, not {total}")
    return weights


def check_tag(tag: str) -> str:
    if not tag or len(tag) > MAX_TAG_LEN or not set(tag) <= TAG_CHARS or tag[0] == "-":
        raise BadRequest(f"tag: {tag!r} must be 1-{MAX_TAG_LEN} lowercase letters, digits or '-' "
                         "(not starting with '-')")
    return tag


def shift(weights: Mapping[int, int], new: int, percent: int) -> dict[int, int]:
    """``new`` gets ``percent``; the rest is shared by the other revisions in their proportions
    (largest remainder, so the result still sums to 100)."""
    if not 0 <= percent <= 100:
        raise BadRequest(f"traffic: the new revision's share must be between 0 and 100, not {percent}")
    others = {r: w for r, w in weights.items() if r != new and w > 0}
    rest = 100 - percent
    total = sum(others.values())
    if not others or total == 0:
        if rest:
            raise BadRequest("traffic: no other revision takes traffic to keep the rest")
        return {new: 100}
    exact = {r: rest * w / total for r, w in others.items()}
    result = {r: math.floor(x) for r, x in exact.items()}
    # hand the percent points lost to rounding to the largest fractions
    for r in sorted(exact, key=lambda r: exact[r] - result[r], reverse=True)[:rest - sum(result.values())]:
        result[r] += 1
    result[new] = percent
    return {r: w for r, w in result.items() if w > 0}


def cycle(weights: Mapping[int, int]) -> tuple[int, ...]:
    """Revisions in the order smooth weighted round-robin sends to them, over one full cycle.

    Weights 80/20 reduce to 4/1: a cycle of 5 with revision 4 in the middle, e.g. (3, 3, 4, 3, 3).
    """
    active = {r: w for r, w in sorted(weights.items()) if w > 0}
    divisor = math.gcd(*active.values()) if active else 1
    reduced = {r: w // divisor for r, w in active.items()}
    total = sum(reduced.values())
    current = dict.fromkeys(reduced, 0)
    order = []
    for _ in range(total):
        for r, w in reduced.items():
            current[r] += w
        chosen = max(current, key=lambda r: current[r])
        current[chosen] -= total
        order.append(chosen)
    return tuple(order)


class Traffic:
    """The gateway's view of one function: its revisions' routes, split by weight or tag."""

    __slots__ = ("_forgotten_queue_wait", "_forgotten_requests", "_next", "_slots", "_tagged",
                 "config", "name", "routes")

    def __init__(self, name: str) -> None:
        self.name = name
        self.routes: dict[int, FunctionRoute] = {}
        self.config = TrafficConfig({})
        self._slots: tuple[FunctionRoute, ...] = ()
        self._tagged: dict[str, FunctionRoute] = {}
        self._next = 0
        self._forgotten_requests = 0  # of revisions no longer held: /metrics' counter never drops
        self._forgotten_queue_wait = Histogram(QUEUE_WAIT_BUCKETS_S)  # the same for the histogram

    def set(self, config: TrafficConfig, routes: Mapping[int, FunctionRoute]) -> None:
        """Install a split; ``routes`` must hold every revision it names."""
        for number, route in self.routes.items():
            if routes.get(number) is not route:
                self._forgotten_requests += route.requests
                self._forgotten_queue_wait = self._forgotten_queue_wait.plus(route.queue_wait)
        self.routes = dict(routes)
        self.config = config
        self._slots = tuple(self.routes[r] for r in cycle(config.weights))
        self._tagged = {tag: self.routes[r] for tag, r in config.tags.items()}
        self._next = 0

    def pick(self, tag: str) -> FunctionRoute | None:
        """The route for one request: the tag's revision, or the next slot of the weighted cycle."""
        if tag:
            return self._tagged.get(tag)
        slots = self._slots
        if not slots:
            return None
        n = self._next
        self._next = n + 1 if n + 1 < len(slots) else 0
        return slots[n]

    # aggregates over the revisions, for /metrics and the read model -------------------------------

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.routes.values())

    @property
    def queued(self) -> int:
        return sum(r.queued for r in self.routes.values())

    @property
    def requests(self) -> int:
        return self._forgotten_requests + sum(r.requests for r in self.routes.values())

    @property
    def in_system(self) -> int:
        return sum(r.in_system for r in self.routes.values())

    @property
    def failure(self) -> GatewayError | None:
        """Set while no weighted revision can start an instance (each one's cold starts fail): the
        newest such failure; None while one of them can serve (e.g. the OIP readiness probe)."""
        weighted = [self.routes[n] for n, w in sorted(self.config.weights.items())
                    if w > 0 and n in self.routes]
        failures = [route.failure for route in weighted]
        if not weighted or any(f is None for f in failures):
            return None
        return failures[-1]

    @property
    def queue_wait(self) -> Histogram:
        """Every revision's queue waits together, those of forgotten revisions included."""
        total = self._forgotten_queue_wait
        for route in self.routes.values():
            total = total.plus(route.queue_wait)
        return total


__all__ = ["Traffic", "TrafficConfig", "check_tag", "cycle", "parse_weights", "shift"]
