"""Recording instance state intervals into the store's append-only ledger.

Lifecycle granularity: starting → ready → frozen → ready … → draining → (closed at exit). ``busy`` is
folded into ``ready`` (both are active and bill the same), so the hot path never writes to the
store. Every write goes through the store's one writer thread, in order; a transition closes the open
interval and opens the next in one transaction, and a heartbeat lets the next server close what a
crashed one left open at the last moment it was known to be alive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from torpor.clock import Clock
from torpor.metering.billing import InstanceInfo, LedgerInterval
from torpor.states import InstanceState
from torpor.store import Store


class Ledger:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        # told about every transition as it is written (torpor.metering.usage for /metrics)
        self.on_transition: Callable[[dict[str, Any], str | None, float], None] | None = None

    def transition(self, info: InstanceInfo, state: InstanceState | None) -> None:
        """Close the instance's open interval now and open one in ``state`` (None: it ended)."""
        row = ledger_row(info)
        value = state.value if state is not None else None
        now = self.clock.now()
        self.store.submit(self.store.ledger_transition, row, value, now)
        if self.on_transition is not None:
            self.on_transition(row, value, now)

    def heartbeat(self) -> None:
        self.store.submit(self.store.heartbeat, self.clock.now())


def ledger_row(info: InstanceInfo) -> dict[str, Any]:
    """The store's row for an instance's interval (its revision as the integer column)."""
    return {**asdict(info), "revision": int(info.revision)}


def intervals(rows: list[dict[str, Any]]) -> list[LedgerInterval]:
    """Store rows as the billing code's intervals."""
    return [
        LedgerInterval.of(
            InstanceInfo(
                instance_id=row["instance_id"], function=row["function"],
                revision=str(row["revision"]), pool=row["pool"], device=row["device"],
                gpu_memory_mb=row["gpu_memory_mb"], cpus=row["cpus"], memory_mb=row["memory_mb"],
                node=row.get("node") or "local",
            ),
            InstanceState(row["state"]), row["start"], row["end"],
        )
        for row in rows
    ]
