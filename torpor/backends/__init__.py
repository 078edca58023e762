"""Where instances run, behind one seam: :class:`InstanceBackend`.

The reconciler asks a backend to start an instance from an :class:`InstancePlan` and gets back a
:class:`StartedInstance` (its :class:`~torpor.address.Address`, node and pool) once the instance
accepts connections; it then calls ``/initialize`` itself over that address. Everything about *how*
an instance runs — processes, templates and forks, pids, cgroups, log files, nodes — stays below
the seam:

- ``torpor.backends.local``: processes on this machine (forked from per-revision templates or
  spawned), frozen by the cgroup freezer or SIGSTOP, logs in ``DATA_DIR/logs``, a guard process
  that stops everything if the server is killed.
- ``torpor.backends.ray``: the same on the nodes of a Ray cluster (an agent per node), placed by
  Ray's scheduler and grown by Ray's autoscaler.

Error hierarchy:

    BackendError
    ├── StartFailed   the instance could not start; carries the tail of its (or its template's) log
    └── UnknownInstance  the backend has no instance by that id (already stopped and forgotten)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torpor.address import Address
from torpor.placement.gpus import GpuDevice, Placement
from torpor.spec import FunctionSpec


class BackendError(Exception):
    """Something a backend could not do; the message is a sentence for the user."""


class StartFailed(BackendError):
    """The instance could not become ready; ``log_tail`` is what it (or its template) printed last."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class UnknownInstance(BackendError):
    """No instance by that id on this backend."""


@dataclass(frozen=True)
class CodeRef:
    """A function's code or model files, content-addressed: ``digest`` names them on every node;
    ``path`` is where they are unpacked on the server's machine."""

    digest: str
    path: Path


@dataclass(frozen=True)
class RevisionPlan:
    """What a backend needs to prepare a revision (build its template) before any instance starts."""

    function: str
    revision: int
    spec: FunctionSpec
    code: CodeRef
    model: CodeRef | None = None


@dataclass(frozen=True)
class InstancePlan:
    """Start one instance of ``revision``; ``pools`` lists acceptable pools, best first (empty: any).
    ``placement``: the node and GPUs it was given (None: no GPU asked, the backend picks the node)."""

    instance_id: str
    revision: RevisionPlan
    pools: tuple[str, ...] = ()
    placement: Placement | None = None

    @property
    def spec(self) -> FunctionSpec:
        return self.revision.spec


@dataclass(frozen=True)
class StartedInstance:
    """An instance that accepts connections at ``address`` (``/initialize`` not called yet)."""

    address: Address
    node: str
    pool: str
    forked: bool = False  # forked from its revision's template rather than spawned
    detail: dict[str, Any] = field(default_factory=dict)  # for display only: pid, log paths


@dataclass(frozen=True)
class Exit:
    """How an instance ended: its exit code when known, and a reason when it did not just exit
    (``out of memory``, ``node <id> lost``)."""

    code: int | None
    reason: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    id: str
    address: str
    pool: str
    resources_total: dict[str, float]
    resources_allocated: dict[str, float]
    alive: bool = True
    gpus: tuple[GpuDevice, ...] = ()  # from NVML or the server config's gpus:


class InstanceBackend(Protocol):
    """Start, watch, freeze, thaw and stop instances wherever they run."""

    name: str
    places_gpus: bool
    """True: the backend's own scheduler picks each GPU instance's node and devices (Ray: a GPU
    demand on its placement group), so torpor's GPU placement and its deploy-time check are skipped
    and ``InstancePlan.placement`` is None. False: torpor places GPU instances on the devices
    :meth:`nodes` reports (``NodeInfo.gpus``) and the backend honours ``InstancePlan.placement``."""

    @property
    def pool_priorities(self) -> dict[str, int]:
        """Each pool's priority (higher: filled first, drained last); one pool for a single machine."""

    async def startup(self) -> None:
        """Once, before the first instance (e.g. start the guard, connect to the cluster)."""

    def prepare(self, plan: RevisionPlan) -> None:
        """A revision was deployed: get ready to start it fast (e.g. build its template)."""

    def retire(self, function: str) -> None:
        """The function was deleted, no longer uses what ``prepare`` built, or has been idle long
        enough that holding it is a waste (the next :meth:`start` builds it again)."""

    async def start(self, plan: InstancePlan) -> StartedInstance:
        """Start the instance and return once it accepts connections; raise :class:`StartFailed`.

        With ``spec.scaling.idle_mode`` the instance is put under the freezer before it can start
        children, so that freezing it later stops everything it started.
        """

    async def wait(self, instance_id: str) -> Exit:
        """Return when the instance has ended, however it ended."""

    async def stop(self, instance_id: str, grace_s: float) -> Exit:
        """Ask it to stop (thawing it first if frozen); kill it after ``grace_s``. Stopping an
        instance the backend no longer knows is harmless (``Exit(None)``)."""

    async def freeze(self, instance_id: str) -> None:
        """Stop the instance using any CPU; raise if it cannot be frozen."""

    async def thaw(self, instance_id: str) -> None: ...

    def log_tail(self, instance_id: str, max_lines: int = 20) -> str:
        """The last lines of the instance's stderr ('' when there are none)."""

    def function_info(self, function: str) -> dict[str, Any] | None:
        """What the backend holds for a function between instances (its template), for the API."""

    def health(self) -> dict[str, Any]:
        """A few facts for ``/healthz`` (freezer, templates, cluster)."""

    def nodes(self) -> list[NodeInfo]: ...

    async def shutdown(self) -> None:
        """Stop whatever is left (templates, agents); instances were stopped before."""
