"""Resource pools with priorities (seed 004): pure decisions, no I/O, no clock.

A pool is a set of nodes (a Ray node is in pool ``P`` when it carries the custom resource
``pool:P``; a node without one is in ``default``). Pools have priorities:

- a new instance goes to the highest-priority pool that has room for it; when no fixed pool has
  room it waits on the elastic pool, whose demand Ray's autoscaler answers by adding nodes;
- scale-in removes instances from the lowest-priority pool first, newest first: the reverse of the
  order they were placed in, so the elastic pool empties first and its nodes can be released;
- a function may restrict itself to some pools (``placement.pools: [onprem]``).

Server config::

    pools:
      - name: onprem
        priority: 10
      - name: cloud
        priority: 1
        elastic: true
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_POOL = "default"
POOL_RESOURCE_PREFIX = "pool:"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9_]{0,61}[a-z0-9])?")  # fullmatch: no trailing newline
_FIELDS = {"name", "priority", "elastic"}


class PoolConfigError(ValueError):
    """A ``pools`` entry or a ``placement.pools`` list is invalid; the message names the field."""


@dataclass(frozen=True)
class Pool:
    name: str
    priority: int = 0
    elastic: bool = False

    @property
    def resource(self) -> str | None:
        """The Ray custom resource naming this pool (``default`` has none)."""
        return None if self.name == DEFAULT_POOL else POOL_RESOURCE_PREFIX + self.name


DEFAULT_POOLS: tuple[Pool, ...] = (Pool(DEFAULT_POOL),)


@dataclass(frozen=True)
class Attempt:
    """Try ``pool``; ``wait`` means stay queued there (demand Ray's autoscaler can see) rather
    than give up quickly and try the next pool."""

    pool: str
    wait: bool


@dataclass(frozen=True)
class Placed:
    """An instance as scale-in sees it: its pool and when it was placed."""

    instance_id: str
    pool: str
    placed_at: float


def parse_pools(raw: Any, field: str = "pools") -> tuple[Pool, ...]:
    """The ``pools`` list of the server config, highest priority first; ``None`` → ``default``."""
    if raw is None:
        return DEFAULT_POOLS
    if not isinstance(raw, list) or not raw:
        raise PoolConfigError(f"{field}: must be a non-empty list of pools")
    pools: list[Pool] = []
    for i, entry in enumerate(raw):
        where = f"{field}[{i}]"
        if not isinstance(entry, dict):
            raise PoolConfigError(f"{where}: must be a mapping with name, priority, elastic")
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise PoolConfigError(f"{where}.{unknown[0]}: unknown field")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PoolConfigError(
                f"{where}.name: must be 1-63 lowercase letters, digits, '-' or '_' (got {name!r})")
        priority = entry.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise PoolConfigError(f"{where}.priority: must be an integer (got {priority!r})")
        elastic = entry.get("elastic", False)
        if not isinstance(elastic, bool):
            raise PoolConfigError(f"{where}.elastic: must be true or false (got {elastic!r})")
        if any(p.name == name for p in pools):
            raise PoolConfigError(f"{where}.name: pool {name!r} is listed twice")
        pools.append(Pool(name, priority, elastic))
    if sum(p.elastic for p in pools) > 1:
        raise PoolConfigError(f"{field}: at most one pool may be elastic")
    return tuple(sorted(pools, key=lambda p: -p.priority))


def check_restriction(
    allowed: Sequence[str], pools: Sequence[Pool], field: str = "placement.pools"
) -> tuple[str, ...]:
    """A function's pool restriction, checked against the configured pools."""
    known = {p.name for p in pools}
    for i, name in enumerate(allowed):
        if name not in known:
            valid = ", ".join(sorted(known))
            raise PoolConfigError(f"{field}[{i}]: unknown pool {name!r}; pools: {valid}")
    return tuple(allowed)


def pool_of(resources: Mapping[str, float]) -> str:
    """The pool a node belongs to, from its resources (``pool:P``), else ``default``."""
    for key in sorted(resources):
        if key.startswith(POOL_RESOURCE_PREFIX) and "_group_" not in key:
            return key[len(POOL_RESOURCE_PREFIX):]
    return DEFAULT_POOL


def fits(demand: Mapping[str, float], free: Mapping[str, float]) -> bool:
    """``demand`` fits in one node's ``free`` resources (a tiny epsilon for float sums)."""
    return all(free.get(key, 0.0) + 1e-9 >= amount for key, amount in demand.items() if amount > 0)


def candidate_pools(pools: Sequence[Pool], allowed: Sequence[str] = ()) -> list[Pool]:
    """The pools an instance may use, highest priority first (``allowed`` empty: all)."""
    chosen = [p for p in pools if not allowed or p.name in allowed]
    return sorted(chosen, key=lambda p: -p.priority)


def pools_by_priority(priorities: Mapping[str, int], allowed: Sequence[str] = ()) -> tuple[str, ...]:
    """The pools a start may use, by name, highest priority first (``allowed`` empty: all) — the
    order in which the reconciler's GPU placement tries their nodes."""
    chosen = [name for name in priorities if not allowed or name in allowed]
    return tuple(sorted(chosen, key=lambda name: -priorities[name]))


def placement_attempts(
    pools: Sequence[Pool],
    demand: Mapping[str, float],
    free_by_node: Iterable[tuple[str, Mapping[str, float]]],
    allowed: Sequence[str] = (),
) -> list[Attempt]:
    """Where to try a new instance, in order.

    Fixed pools with a node that has room, highest priority first, each tried briefly; then the
    elastic pool, waited on (its demand reaches Ray's autoscaler). Without an elastic pool the
    instance waits on the best pool (room may free up) instead of failing at once.
    ``free_by_node`` is ``(pool, free resources)`` per live node.
    """
    candidates = candidate_pools(pools, allowed)
    if not candidates:
        return []
    free = list(free_by_node)
    attempts = [
        Attempt(p.name, wait=False)
        for p in candidates
        if not p.elastic and any(pool == p.name and fits(demand, room) for pool, room in free)
    ]
    elastic = next((p for p in candidates if p.elastic), None)
    attempts.append(Attempt((elastic or candidates[0]).name, wait=True))
    return attempts


def scale_in_order(placed: Iterable[Placed], pools: Sequence[Pool]) -> list[str]:
    """Instance ids in the order to remove them: lowest-priority pool first, newest first."""
    priority = {p.name: p.priority for p in pools}
    ordered = sorted(placed, key=lambda i: (priority.get(i.pool, 0), -i.placed_at, i.instance_id))
    return [i.instance_id for i in ordered]
