"""Billed seconds and cost so far, by function and state, kept in memory for ``/metrics``.

The ledger tells :class:`UsageMeter` about every interval it closes and opens (the same transitions it
writes to the store), so a scrape costs no query: closed intervals are summed once, open ones are
priced up to the scrape's ``now``. The figures are Prometheus counters: they start from zero when the
server starts (a counter reset, which ``rate()`` handles); the bill over the ledger stays the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from torpor.metering import billing
from torpor.metering.prices import PriceTable
from torpor.states import InstanceState


@dataclass
class _Open:
    info: billing.InstanceInfo
    state: InstanceState
    start: float


class UsageMeter:
    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices
        self.closed_seconds: dict[tuple[str, str], float] = {}
        self.closed_cost: dict[tuple[str, str], Decimal] = {}
        self._open: dict[str, _Open] = {}

    def transition(self, info: dict[str, Any], state: str | None, at: float) -> None:
        """The ledger closed the instance's open interval at ``at`` and opened one in ``state``."""
        current = self._open.pop(info["instance_id"], None)
        if current is not None and at > current.start:
            key = (current.info.function, current.state.value)
            self.closed_seconds[key] = self.closed_seconds.get(key, 0.0) + at - current.start
            self.closed_cost[key] = self.closed_cost.get(key, Decimal(0)) + self._cost(current, at)
        if state is not None:
            fields = {**info, "revision": str(info["revision"])}
            self._open[info["instance_id"]] = _Open(billing.InstanceInfo(**fields),
                                                    InstanceState(state), at)

    def totals(self, now: float) -> dict[tuple[str, str], tuple[float, Decimal]]:
        """``(function, state) → (seconds, cost)`` including the open intervals up to ``now``."""
        out = {key: (seconds, self.closed_cost.get(key, Decimal(0)))
               for key, seconds in self.closed_seconds.items()}
        for current in self._open.values():
            if now <= current.start:
                continue
            key = (current.info.function, current.state.value)
            seconds, cost = out.get(key, (0.0, Decimal(0)))
            out[key] = (seconds + now - current.start, cost + self._cost(current, now))
        return out

    def _cost(self, current: _Open, end: float) -> Decimal:
        interval = billing.LedgerInterval.of(current.info, current.state, current.start, end)
        return billing.bill([interval], self.prices, current.start, end).cost
