"""Recording instance state intervals into the store's append-only ledger.

Lifecycle granularity: starting → ready → frozen → ready … → draining → (closed at exit). ``busy`` is
folded into ``ready`` (both are active and bill the same), so the hot path never writes to the
store. Every write goes through the store's one writer thread, in order; a transition closes the open
interval and opens the next in one transaction, and a heartbeat lets the next server close what a
crashed one left open at the last moment it was known to be alive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torpor.clock import Clock
from torpor.lifecycle.instance import Instance
from torpor.lifecycle.state import InstanceState
from torpor.metering.billing import InstanceInfo, LedgerInterval
from torpor.spec import FunctionSpec
from torpor.store import Store

POOL_LOCAL = "local"


def instance_info(instance: Instance, spec: FunctionSpec) -> dict[str, Any]:
    resources = spec.resources
    on_gpu = resources.gpus > 0 or resources.gpu_memory_mb > 0
    return {
        "instance_id": instance.id,
        "function": instance.function,
        "revision": instance.revision,
        "pool": POOL_LOCAL,
        "device": "gpu" if on_gpu else "cpu",
        "gpu_memory_mb": resources.gpu_memory_mb,
        "cpus": resources.cpus,
        "memory_mb": resources.memory_mb,
    }


class Ledger:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        # told about every transition as it is written (torpor.metering.usage for /metrics)
        self.on_transition: Callable[[dict[str, Any], str | None, float], None] | None = None

    def transition(self, instance: Instance, spec: FunctionSpec, state: InstanceState | None) -> None:
        """Close the instance's open interval now and open one in ``state`` (None: it ended)."""
        info = instance_info(instance, spec)
        value = state.value if state is not None else None
        now = self.clock.now()
        self.store.submit(self.store.ledger_transition, info, value, now)
        if self.on_transition is not None:
            self.on_transition(info, value, now)

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
            ),
            InstanceState(row["state"]), row["start"], row["end"],
        )
        for row in rows
    ]
