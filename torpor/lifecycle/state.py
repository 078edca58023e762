"""Instance state, derived from recorded facts.

The reconciler records *facts* (when a process started, became ready, was frozen, was asked to stop,
exited) and never sets a state by hand; :func:`derive_state` is the one place that turns facts into
the state users see. See DESIGN.md's lifecycle picture.
"""

from __future__ import annotations

from dataclasses import dataclass

from torpor.states import InstanceState

__all__ = ["LIVE_STATES", "InstanceFacts", "InstanceState", "derive_state"]


LIVE_STATES = frozenset(
    {InstanceState.STARTING, InstanceState.READY, InstanceState.BUSY, InstanceState.FROZEN}
)


@dataclass
class InstanceFacts:
    """What happened to one instance, as timestamps on the server's clock (seconds)."""

    started_at: float
    listening_at: float | None = None  # its HTTP server accepted a connection
    ready_at: float | None = None  # /initialize succeeded: it may take traffic
    freeze_requested_at: float | None = None  # idle mode took it out of routing to freeze it
    frozen_at: float | None = None  # set while frozen, cleared on thaw
    thaw_requested_at: float | None = None  # a waiting request asked for a thaw
    draining_at: float | None = None  # torpor asked it to stop (scale-in, redeploy, delete)
    exited_at: float | None = None
    exit_code: int | None = None
    failure: str | None = None  # why it could not start or was killed


def derive_state(facts: InstanceFacts, in_flight: int) -> InstanceState:
    """The state shown to users, from facts alone.

    An exit that torpor asked for is STOPPED; any other exit, or a recorded failure, is FAILED.
    """
    if facts.failure is not None:
        return InstanceState.FAILED
    if facts.exited_at is not None:
        return InstanceState.STOPPED if facts.draining_at is not None else InstanceState.FAILED
    if facts.draining_at is not None:
        return InstanceState.DRAINING
    if facts.ready_at is None:
        return InstanceState.STARTING
    if facts.frozen_at is not None:
        return InstanceState.FROZEN
    return InstanceState.BUSY if in_flight > 0 else InstanceState.READY
