"""Recording instance state intervals into the store's append-only ledger.

Lifecycle granularity: starting → ready → frozen → ready … → draining → (closed at exit). ``busy`` is
folded into ``ready`` (both are active and bill the same), so the hot path never writes to the
store. Every write goes through the store's one writer thread, in order; a transition closes the open
interval and opens the next in one transaction, and a heartbeat lets the next server close what a
crashed one left open at the last moment it was known to be alive.
"""

from __future__ import annotations

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

    def transition(self, info: InstanceInfo, state: InstanceState | None) -> None:
        """Close the instance's open interval now and open one in ``state`` (None: it ended)."""
        row = {**asdict(info), "revision": int(info.revision)}
        self.store.submit(self.store.ledger_transition, row,
                          state.value if state is not None else None, self.clock.now())

    def heartbeat(self) -> None:
        self.store.submit(self.store.heartbeat, self.clock.now())


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
