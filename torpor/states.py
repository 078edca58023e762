"""The states an instance can be in, as users see them (``torpor instances``, the ledger, bills).

A leaf module: the lifecycle derives these states from facts (``torpor.lifecycle.state``), and
metering and billing, which sit below the lifecycle, read them without importing it.
"""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    BUSY = "busy"
    FROZEN = "frozen"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"
