"""An instance and the function it belongs to, as the reconciler holds them in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torpor.autoscaling.autoscaler import AutoscalerState, ScaleDecision
from torpor.autoscaling.keepalive import ColdStarts
from torpor.autoscaling.kpa import KpaConfig
from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.autoscaling.scaling_policies import ProvisionConfig
from torpor.backends import CodeRef, RevisionPlan, StartedInstance
from torpor.gateway.route import Endpoint, FunctionRoute
from torpor.gateway.traffic import Traffic, TrafficConfig
from torpor.lifecycle.state import LIVE_STATES, InstanceFacts, InstanceState, derive_state
from torpor.metering.billing import InstanceInfo
from torpor.placement.gpus import Placement
from torpor.spec import FunctionSpec


@dataclass
class Instance:
    id: str
    function: str
    revision: int
    facts: InstanceFacts
    provisioned: bool = False
    started: StartedInstance | None = None  # what the backend said once it listened
    placement: Placement | None = None  # its GPUs (None: it asked for none)
    endpoint: Endpoint | None = None
    timings: dict[str, float] = field(default_factory=dict)  # reported by the runtime

    @property
    def forked(self) -> bool:
        """Forked from its revision's template rather than spawned."""
        return self.started is not None and self.started.forked

    @property
    def node(self) -> str | None:
        return self.started.node if self.started is not None else None

    @property
    def pool(self) -> str | None:
        return self.started.pool if self.started is not None else None

    @property
    def in_flight(self) -> int:
        return self.endpoint.in_flight if self.endpoint is not None else 0

    @property
    def state(self) -> InstanceState:
        return derive_state(self.facts, self.in_flight)

    def idle_transition(self) -> str | None:
        """Idle mode's step in progress: ``freezing`` or ``thawing`` (None otherwise)."""
        facts = self.facts
        if facts.thaw_requested_at is not None:
            return "thawing"
        if facts.freeze_requested_at is not None and facts.frozen_at is None:
            return "freezing"
        return None

    def placement_to_api(self) -> dict[str, Any]:
        """``{node, gpus: [indices], gpu_memory_mb}``: where it runs and what GPU memory it holds."""
        if self.placement is not None:
            return self.placement.to_api()
        return {"node": self.node, "gpus": [], "gpu_memory_mb": 0}

    def cold_start(self) -> dict[str, float | str | None]:
        """Where the cold start went, in seconds.

        ``spawn_s`` (or ``fork_s``): start → its server listens, which includes import and
        ``load()`` for a spawned process and ``setup()`` for both; ``load_s``/``setup_s``/
        ``warmup_s`` as the runtime measured them (a forked instance's ``load_s`` was paid once, by
        its template); ``initialize_s``: listening → ready (``/initialize``); ``first_response_s``:
        ready → the first response sent; ``total_s``: start → ready.
        """
        f = self.facts
        first = self.endpoint.first_response_at if self.endpoint is not None else None
        breakdown: dict[str, float | str | None] = {
            "mode": "fork" if self.forked else "spawn",
            ("fork_s" if self.forked else "spawn_s"): _span(f.started_at, f.listening_at),
            "initialize_s": _span(f.listening_at, f.ready_at),
            "first_response_s": _span(f.ready_at, first),
            "total_s": _span(f.started_at, f.ready_at),
        }
        for key in ("load_s", "setup_s", "warmup_s"):
            if key in self.timings:
                breakdown[key] = round(self.timings[key], 6)
        return breakdown

    def ledger_record(self, spec: FunctionSpec) -> InstanceInfo:
        """What the ledger records with each of this instance's state intervals."""
        resources = spec.resources
        on_gpu = resources.gpus > 0 or resources.gpu_memory_mb > 0
        return InstanceInfo(
            instance_id=self.id, function=self.function, revision=str(self.revision),
            pool=self.pool or "local", device="gpu" if on_gpu else "cpu",
            gpu_memory_mb=self.placement.gpu_memory_mb if self.placement else resources.gpu_memory_mb,
            cpus=resources.cpus,
            memory_mb=resources.memory_mb, node=self.node or "local",
        )

    def record(self) -> dict[str, Any]:
        """The row kept in the store."""
        f = self.facts
        detail = self.started.detail if self.started is not None else {}
        return {
            "id": self.id,
            "function": self.function,
            "revision": self.revision,
            "pid": detail.get("pid"),
            "address": str(self.started.address) if self.started is not None else "",
            "node": self.node,
            "pool": self.pool,
            "started_at": f.started_at,
            "listening_at": f.listening_at,
            "ready_at": f.ready_at,
            "draining_at": f.draining_at,
            "exited_at": f.exited_at,
            "exit_code": f.exit_code,
            "failure": f.failure,
            "state": self.state.value,
        }

    def to_api(self) -> dict[str, Any]:
        detail = self.started.detail if self.started is not None else {}
        return {
            **self.record(),
            "in_flight": self.in_flight,
            "provisioned": self.provisioned,
            "idle": self.idle_transition(),
            "cold_start": self.cold_start(),
            "placement": self.placement_to_api(),
            "stdout_log": detail.get("stdout_log"),
            "stderr_log": detail.get("stderr_log"),
        }


@dataclass
class RevisionRuntime:
    """One immutable revision of a function: what it runs, its own route (instances and queue)
    and its own autoscaler. A revision that takes no traffic scales to zero and is then forgotten
    (it stays in the store and comes back on a rollback)."""

    number: int
    spec: FunctionSpec
    code: CodeRef  # the uploaded code this revision runs
    source: str
    route: FunctionRoute
    created_at: float
    model: CodeRef | None = None  # model.path's copy in the model cache
    created_by: str | None = None
    recorder: ConcurrencyRecorder = field(default_factory=ConcurrencyRecorder)
    autoscaler: AutoscalerState = field(default_factory=AutoscalerState)
    decision: ScaleDecision = field(default_factory=lambda: ScaleDecision(0, 0, False, "deployed"))
    next_decision_at: float = 0.0
    failures: int = 0  # consecutive failed cold starts (drives the backoff)
    backoff_until: float = 0.0
    last_error: str | None = None
    prepared: bool = False  # the backend was asked to prepare it (a template), not yet retired
    cold_starts: ColdStarts = field(default_factory=ColdStarts)  # this revision's last ones
    cold_start_s: float | None = None  # their median (ColdStarts.typical)

    @property
    def plan(self) -> RevisionPlan:
        return RevisionPlan(function=self.spec.name, revision=self.number, spec=self.spec,
                            code=self.code, model=self.model)

    @property
    def kpa_config(self) -> KpaConfig:
        return KpaConfig.from_spec(self.spec.scaling, self.spec.concurrency)


@dataclass
class FunctionRuntime:
    """A deployed function: its revisions in memory, how traffic is split between them, and the
    instances of all of them. ``latest`` (the newest deploy) is always in memory; ``spec``,
    ``code`` and friends are its."""

    name: str
    traffic: Traffic  # what the gateway reads: one route per revision, weights and tags
    created_at: float
    updated_at: float
    latest: int = 0
    revisions: dict[int, RevisionRuntime] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    provision: ProvisionConfig = field(default_factory=ProvisionConfig)
    waiting: str | None = None  # why a wanted instance is not started (e.g. the GPUs are full)

    @property
    def current(self) -> RevisionRuntime:
        return self.revisions[self.latest]

    @property
    def spec(self) -> FunctionSpec:
        return self.current.spec

    @property
    def revision(self) -> int:
        return self.latest

    @property
    def code(self) -> CodeRef:
        return self.current.code

    @property
    def model(self) -> CodeRef | None:
        return self.current.model

    @property
    def source(self) -> str:
        return self.current.source

    @property
    def route(self) -> Traffic:
        """In flight, queued and requests summed over the revisions (for /metrics)."""
        return self.traffic

    @property
    def config(self) -> TrafficConfig:
        return self.traffic.config

    @property
    def decision(self) -> ScaleDecision:
        """The revisions' decisions summed (the primary revision's reason)."""
        decisions = [r.decision for r in self.revisions.values()]
        primary = self.revisions.get(self.config.primary) if self.config.weights else None
        reason = (primary or self.current).decision.reason
        return ScaleDecision(sum(d.desired for d in decisions), sum(d.provisioned for d in decisions),
                             any(d.panic for d in decisions), reason)

    @property
    def last_error(self) -> str | None:
        errors = [r.last_error for r in self.routed() if r.last_error is not None]
        return errors[-1] if errors else None

    def routed(self) -> list[RevisionRuntime]:
        """Revisions that take traffic (a weight or a tag), oldest first."""
        return [self.revisions[n] for n in sorted(self.config.routed) if n in self.revisions]

    def revision_of(self, instance: Instance) -> RevisionRuntime:
        return self.revisions.get(instance.revision) or self.current

    def live(self, revision: int | None = None) -> list[Instance]:
        """Instances starting, serving or frozen (of one revision, or of all)."""
        return [
            i
            for i in self.instances.values()
            if i.state in LIVE_STATES and (revision is None or i.revision == revision)
        ]

    def status(self) -> str:
        routed = self.config.routed
        states = [i.state for i in self.live() if i.revision in routed]
        if InstanceState.READY in states or InstanceState.BUSY in states:
            return "ready"
        if self.last_error is not None:
            return "error"
        if InstanceState.STARTING in states:
            return "starting"
        return "scaled_to_zero" if not states else "idle"


def _span(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(end - start, 6)
