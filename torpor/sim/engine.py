"""One function's requests through torpor's own scaling and routing code, on a FakeClock.

What runs is the server's code: :func:`torpor.autoscaling.autoscaler.decide` (KPA stages and
provisioning policies) fed by a :class:`~torpor.autoscaling.metrics.ConcurrencyRecorder` (as
:class:`~torpor.sim.window.PrefixRecorder`, which only sums windows faster) that sees every change
of requests in the system exactly as the gateway reports it; the reconciler's pure
:func:`torpor.lifecycle.planner.plan` choosing what to start, drain and freeze; and the function's
:class:`~torpor.gateway.routing_policies.RoutingPolicy` choosing among the gateway's own
:class:`~torpor.gateway.route.Endpoint` objects. What the simulator supplies is what carrying the
plans out and serving would take, reduced to events on a heap:

- the reconciler decides every ``tick_s`` and at once when a request has to wait (the gateway pokes
  it), and plans after each decision and on a pass after an instance goes idle; started instances
  are ready ``cold_start_s`` later, drained ones gone ``stop_s`` later, frozen ones frozen
  ``freeze_s`` later;
- the gateway queue is FIFO, bounded by ``queue.max_queued`` (503) and ``queue.timeout_s`` (504), and
  asks for frozen endpoints to thaw (``thaw_s``) as ``FunctionRoute._thaw_for_waiters`` does; while
  the decision takes the queue out of the path (``target_burst_capacity``), a request with no free
  slot goes where :func:`~torpor.gateway.route.choose_endpoint` sends it and waits at that
  instance, FIFO, as a real instance serves at most ``concurrency`` at a time;
- the measured cold start the keep-alive policy reads is the same median of the last ones the
  reconciler keeps (``ColdStarts`` of each start's ``cold_start_s``);
- every instance state change is written to a ledger list in the billing code's own
  :class:`~torpor.metering.billing.LedgerInterval` form, ``busy`` folded into ``ready`` as the
  server's ledger does.

Speed: arrivals are read from the trace's arrays in order (never put on the heap), the heap holds
only completions and instance transitions, and ticks stop while the function is at zero with no
request and no time-dependent policy (the decision cannot change until the next arrival).
"""

from __future__ import annotations

import gc
import heapq
import math
import random
from array import array
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torpor.autoscaling import autoscaler
from torpor.autoscaling.keepalive import ColdStarts, KeepAliveConfig
from torpor.autoscaling.kpa import KpaConfig
from torpor.autoscaling.scaling_policies import ProvisionConfig
from torpor.clock import FakeClock
from torpor.constants import RECONCILE_INTERVAL_S
from torpor.gateway.route import Endpoint, choose_endpoint
from torpor.gateway.routing_policies import PowerOfTwo, RoutingPolicy
from torpor.gateway.upstream import UpstreamResponse
from torpor.lifecycle import planner
from torpor.lifecycle.planner import HOLD_EPSILON_S
from torpor.lifecycle.state import InstanceState
from torpor.metering.billing import InstanceInfo, LedgerInterval
from torpor.sim.traces import FunctionTrace
from torpor.sim.window import PrefixRecorder
from torpor.spec import FunctionSpec

# Heap event kinds; at one instant a completion is handled before a ready instance, and so on.
_COMPLETE, _READY, _THAWED, _FROZEN, _EXITED, _PASS = range(6)
_INF = math.inf
POOL = "local"  # the local backend's one pool
SETTLE_LIMIT_S = 3600.0  # a replay without an end stops this long after its last request's grace



@dataclass(frozen=True)
class Timings:
    """Times the simulator cannot compute: measure them with torpor (``bench/coldstart``,
    ``bench/wake``, ``/metrics``) or pass them as flags. Defaults are torpor's CPU figures."""

    cold_start_s: float = 0.015  # start → ready (fork from a template, /initialize)
    thaw_s: float = 0.0025  # frozen → ready again
    freeze_s: float = 0.005  # the freeze hook and the freezer, before the ledger says frozen
    stop_s: float = 0.01  # draining → exited (SIGTERM to exit)
    overhead_s: float = 0.0003  # the gateway and HTTP, added to every answered request
    pass_delay_s: float = RECONCILE_INTERVAL_S / 2  # a reconciler pass comes 0.25 s later on average

    def __post_init__(self) -> None:
        bad = [name for name, value in asdict(self).items() if not (value >= 0 and math.isfinite(value))]
        if bad:
            raise ValueError(f"timings must be finite and at least 0: {', '.join(bad)}")

    def __reduce__(self) -> tuple[type[Timings], tuple[float, ...]]:  # as billing.LedgerInterval's
        return type(self), tuple(getattr(self, f.name) for f in fields(self))


@dataclass(slots=True)
class _Instance:
    info: InstanceInfo
    started_at: float
    provisioned: bool
    endpoint: Endpoint | None = None  # set once ready
    draining: bool = False
    frozen: bool = False  # the ledger says FROZEN
    # idle mode's facts (``route.IdleFacts``), from which the endpoint derives frozen/thawing/accepting
    freeze_requested_at: float | None = None
    thaw_requested_at: float | None = None
    failure: str | None = None  # why it ended (the gateway's 502 reads it); a simulated one never fails
    state: InstanceState = InstanceState.STARTING  # the ledger's open interval: state and start
    since: float = 0.0
    # requests sent past a full slot (gateway queue out of the path): (arrived, sent, service)
    backlog: deque[tuple[float, float, float]] = field(default_factory=deque)
    view: planner.InstanceView | None = None  # as the planner last saw it


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, and on or off again as it was: what a
    replay makes lives until its end (the ledger, every instance), and its bill reads the ledger,
    so a collection would only walk what is kept, again and again as it grows (≈ 20 % of the CPU
    of a replay and its bill with the keep-alive policy)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


@dataclass
class FunctionResult:
    """What one function's replay produced; ``latencies_s`` holds answered requests only."""

    function: str
    requests: int = 0
    answered: int = 0
    rejected: int = 0  # queue full: 503
    timed_out: int = 0  # waited past queue.timeout_s, or ran past timeout_s: 504
    queued: int = 0  # requests that waited for an instance at all
    cold_starts: int = 0  # instances started
    cold_start_requests: int = 0  # answered by an instance that became ready after they arrived
    thawed_requests: int = 0
    thaws: int = 0
    end_s: float = 0.0
    latencies_s: array[float] = field(default_factory=lambda: array("d"))
    arrivals_s: array[float] = field(default_factory=lambda: array("d"))  # of answered requests
    intervals: list[LedgerInterval] = field(default_factory=list)
    """The ledger, closed at ``end_s``: what ``intervals_from_timeline`` makes of the state changes."""
    timeline: list[tuple[float, int, int, int, int, int]] = field(default_factory=list)
    """(t, in system, starting, ready, frozen, draining) at every decision, when asked for."""


class FunctionSim:
    """Replay one function's trace; :meth:`run` returns the result once, at ``end_s``."""

    def __init__(self, name: str, spec: FunctionSpec, trace: FunctionTrace, timings: Timings,
                 *, end_s: float | None = None, seed: int = 0, timeline: bool = False,
                 provision: ProvisionConfig | None = None) -> None:
        self.name = name
        self.spec = spec
        self.trace = trace
        self.timings = timings
        self.clock = FakeClock()
        self.now = self.clock.now()
        self.kpa = KpaConfig.from_spec(spec.scaling, spec.concurrency)
        self.keep_alive = KeepAliveConfig.from_spec(spec.scaling, spec.concurrency)
        # the server's recorder, with faster window sums; idle spells only for the keep-alive policy
        self.recorder = PrefixRecorder(keep_spells=self.keep_alive is not None)
        self.cold_starts = ColdStarts()  # as RevisionRuntime's
        self.cold_start_s: float | None = None  # their median, as RevisionRuntime.cold_start_s
        self.provision = provision or ProvisionConfig(target=spec.scaling.provisioned)
        self.time_dependent = bool(self.provision.target_tracking or self.provision.scheduled)
        self.policy = RoutingPolicy.make(spec.routing.policy)
        if isinstance(self.policy, PowerOfTwo):  # seeded, so a replay is deterministic
            self.policy = PowerOfTwo(random.Random(seed))
        self.state = autoscaler.AutoscalerState()
        self.decision = autoscaler.ScaleDecision(0, 0, False, "deployed")
        self.endpoints: list[Endpoint] = []
        self.live: list[_Instance] = []  # starting, serving or frozen (not draining)
        self.by_id: dict[str, _Instance] = {}
        self.waiters: deque[tuple[float, float]] = deque()  # (arrival, service)
        self.in_flight = 0
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.next_tick = 0.0  # the next reconciler pass that may decide
        self.next_decision_at = 0.0  # every tick_s; sooner while requests wait
        self.keep_alive_pass_at = -_INF  # the pass asked for when a keep-alive ends
        self._holds: list[float] = []  # the keep-alive decision's holds, ascending
        self._holds_of: tuple[float | None, tuple[float, ...]] | None = None  # ... of these (keep, warm)
        self.draining = 0
        self.marked = 0  # provisioned count at the last plan
        self.live_changed = False  # an instance started or drained since the last plan
        self.idle_mode = spec.scaling.idle_mode
        self.end_s = None if end_s is None else float(end_s)  # an int is its float, as compiled (mypyc)
        self.want_timeline = timeline
        self.result = FunctionResult(name)
        self.on_gpu = spec.resources.gpus > 0 or spec.resources.gpu_memory_mb > 0
        resources = spec.resources  # the ledger's own checks of them, once (``_interval`` skips them)
        LedgerInterval(name, name, "1", POOL, "gpu" if self.on_gpu else "cpu", resources.gpu_memory_mb,
                       resources.cpus, resources.memory_mb, InstanceState.STARTING, 0.0, 0.0)
        self.tick_s = spec.scaling.tick_s

    # the event loop ------------------------------------------------------------------------------

    def run(self) -> FunctionResult:
        """Replay to the end (once), with the collector paused (:func:`collector_paused`). At the
        end each instance lets go of its endpoint, whose idle facts are the instance: with that
        cycle broken, all of it is freed without the collector once the simulator is dropped."""
        with collector_paused():
            try:
                return self._replay()
            finally:
                for instance in self.by_id.values():
                    instance.endpoint = None  # (its endpoint's idle facts are the instance: a cycle)

    def _replay(self) -> FunctionResult:
        arrivals, services = self.trace.arrivals_s, self.trace.services_s
        n, i = len(arrivals), 0
        heap, clock, result = self.heap, self.clock, self.result
        # without an end, run until settled (a time-dependent policy never is: bounded)
        scaling = self.spec.scaling
        end = self.end_s if self.end_s is not None else (
            (arrivals[-1] if n else 0.0) + SETTLE_LIMIT_S + scaling.scale_to_zero_grace_s
            + scaling.scale_to_zero_pod_retention_s + 2 * scaling.stable_window_s
            + scaling.scale_down_delay_s)
        queue_timeout_s = self.spec.queue.timeout_s
        self.next_tick = arrivals[0] if n else _INF
        waiters = self.waiters
        heappop, complete, settles = heapq.heappop, self._complete, self.end_s is None
        while True:
            # the earliest of: the next arrival, heap event, queue timeout and reconciler pass
            t = t_arrival = arrivals[i] if i < n else _INF
            t_event = heap[0][0] if heap else _INF
            if t_event < t:
                t = t_event
            t_timeout = waiters[0][0] + queue_timeout_s if waiters else _INF
            if t_timeout < t:
                t = t_timeout
            if self.next_tick < t:
                t = self.next_tick
            if t > end:
                break
            now = self.now
            if t > now:
                clock.advance(t - now)
                self.now = clock.now()  # handlers read the time here (it is the clock's, to the bit)
            if t_event <= t:
                _, kind, _, subject = heappop(heap)
                if kind == _COMPLETE:
                    complete(subject)
                else:
                    self._handle(kind, subject)
            elif t_arrival <= t:
                self._arrive(services[i])
                i += 1
            elif t_timeout <= t:
                self._time_out_head()
            else:
                self._tick(t)
            if settles and i >= n and self._settled():
                break
        result.end_s = min(clock.now(), end) if self.end_s is None else self.end_s
        # an instance still live keeps an open interval (end None, or the given end): a bill runs it
        # to its own end, as it does the server ledger's open intervals
        for instance in self.by_id.values():
            if instance.state is not InstanceState.STOPPED:
                info = instance.info
                result.intervals.append(LedgerInterval(
                    info.instance_id, info.function, info.revision, info.pool, info.device,
                    info.gpu_memory_mb, info.cpus, info.memory_mb, instance.state, instance.since,
                    self.end_s))
        return result

    def _settled(self) -> bool:
        """Nothing left to happen: no request, no instance beyond what the decision keeps, and the
        decision already at its floor (with no requests it can only fall to provisioned/min)."""
        floor = max(self.decision.provisioned, self.kpa.min_instances)
        return (not self.heap and not self.waiters and self.in_flight == 0
                and self.decision.desired <= floor and len(self.live) <= floor
                and not self.time_dependent)

    def _push(self, at: float, kind: int, subject: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, subject))

    def _handle(self, kind: int, subject: Any) -> None:
        """``subject`` is the endpoint of a completion, nothing for a pass, else the instance."""
        if kind == _COMPLETE:
            self._complete(subject)
            return
        if kind == _PASS:
            # the keep-alive policy decides on every reconciler pass (the server's does too)
            self._decide() if self.decision.keep_idle_s is not None else self._act()
            return
        if kind == _READY:
            self._ready(subject)
        elif kind == _THAWED:
            self._thawed(subject)
        elif kind == _FROZEN:
            self._frozen(subject)
        elif kind == _EXITED:
            self.draining -= 1
            self._ledger(subject, InstanceState.STOPPED)

    # the gateway ---------------------------------------------------------------------------------

    def _arrive(self, service_s: float) -> None:
        now = self.now
        result = self.result
        result.requests += 1
        # (recorded as record_request(now) here and record(now, in system) once it is placed: with
        # nothing recorded in between, ``arrived`` does both at once)
        endpoint = choose_endpoint(self.policy, self.endpoints, self.decision.activator_in_path)
        if endpoint is not None:
            self._serve(endpoint, now, service_s)
            self.recorder.arrived(now, self.in_flight + len(self.waiters))
            return
        if len(self.waiters) >= self.spec.queue.max_queued:
            self.recorder.record_request(now)
            result.rejected += 1  # the poke decides only if others wait (``queued > 0``)
            if self.waiters:
                self._decide()
            return
        result.queued += 1
        self.waiters.append((now, service_s))
        self.recorder.arrived(now, self.in_flight + len(self.waiters))
        self._thaw_for_waiters()
        self._decide()  # a request waits: the reconciler decides at once

    def _serve(self, endpoint: Endpoint, arrived: float, service_s: float) -> None:
        """Take a slot and send: the instance runs it now, or after those ahead of it when the
        request was sent past its ``concurrency`` (the gateway queue out of the path)."""
        endpoint.in_flight += 1
        self.in_flight += 1
        if endpoint.in_flight > endpoint.capacity:
            self.by_id[endpoint.instance_id].backlog.append((arrived, self.now, service_s))
            return
        self._run(endpoint, arrived, self.now, service_s)

    def _run(self, endpoint: Endpoint, arrived: float, sent: float, service_s: float) -> None:
        """The instance runs a request sent at ``sent``: latency is the wait (in the gateway queue
        or at the instance), the service time and the gateway's cost."""
        now = self.now
        result = self.result
        timeout_s = self.spec.timeout_s
        if now - sent + service_s > timeout_s:
            # the client gets 504 after timeout_s; the slot stays taken until the instance has
            # really finished (as the gateway does: a timed-out request never frees a busy slot)
            result.timed_out += 1
            self._push(now + service_s, _COMPLETE, endpoint)
            return
        result.answered += 1
        result.latencies_s.append(now - arrived + service_s + self.timings.overhead_s)
        result.arrivals_s.append(arrived)
        if endpoint.ready_at > arrived:
            result.cold_start_requests += 1
        elif endpoint.thawed_at > arrived:
            result.thawed_requests += 1
        self._push(now + service_s, _COMPLETE, endpoint)

    def _complete(self, endpoint: Endpoint) -> None:
        now = self.now
        endpoint.in_flight -= 1
        self.in_flight -= 1
        backlog = self.by_id[endpoint.instance_id].backlog
        if backlog:
            self._run(endpoint, *backlog.popleft())
        self._dispatch()
        if endpoint.in_flight == 0:
            endpoint.idle_since = now
            self._idle(endpoint)

    def _idle(self, endpoint: Endpoint) -> None:
        """An endpoint has nothing in flight: a later reconciler pass may drain or freeze it."""
        scaling = self.spec.scaling
        if self.decision.keep_idle_s is not None:  # the reconciler wakes when its keep-alive ends
            self._wake_for_keep_alive()
        elif len(self.live) > self.decision.desired:
            self._push(self.now + self.timings.pass_delay_s, _PASS, None)
        elif endpoint.provisioned and scaling.idle_mode:
            self._push(self.now + scaling.idle_after_s + self.timings.pass_delay_s, _PASS, None)

    def _wake_for_keep_alive(self) -> None:
        """A pass when the first idle instance's keep-alive ends (``Reconciler._wake_for_keep_alive``):
        the earliest ``idle_since + hold`` after now over idle endpoints and the decision's holds.
        The holds are sorted once per set of holds; an endpoint's first hold that ends after now is
        its earliest (a float sum grows with the hold)."""
        decision, of = self.decision, self._holds_of
        if of is None or decision.keep_warm_s is not of[1] or decision.keep_idle_s != of[0]:
            holds = self._sort_holds(decision)
        else:
            holds = self._holds
        now = self.now
        first = _INF
        for e in self.endpoints:
            if e.in_flight == 0:
                idle_since = e.idle_since
                for k in holds:
                    end = idle_since + k
                    if end > now:
                        if end < first:
                            first = end
                        break
        if first < _INF and not (now < self.keep_alive_pass_at <= first):
            self.keep_alive_pass_at = first
            self._push(first, _PASS, None)

    def _sort_holds(self, decision: autoscaler.ScaleDecision) -> list[float]:
        """The keep-alive decision's holds (its keep-alive and warm keep-alives), ascending, kept
        while later decisions carry the same ones (the policy hands out its warm tuples cached)."""
        keep_s = decision.keep_idle_s
        assert keep_s is not None
        self._holds = sorted({keep_s, *decision.keep_warm_s})
        self._holds_of = (keep_s, decision.keep_warm_s)
        return self._holds

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first (``FunctionRoute.dispatch``)."""
        waiters = self.waiters
        while waiters:
            endpoint = self.policy.choose(self.endpoints)
            if endpoint is None:
                break
            arrived, service_s = waiters.popleft()
            self._serve(endpoint, arrived, service_s)
        self.recorder.record(self.now, self.in_flight + len(waiters))

    def _time_out_head(self) -> None:
        self.waiters.popleft()
        self.result.timed_out += 1
        self.recorder.record(self.now, self.in_flight + len(self.waiters))

    def _thaw_for_waiters(self) -> None:
        """Thaw as many frozen endpoints as the queue needs, provisioned first (without idle mode
        none is ever frozen)."""
        if not self.idle_mode:
            return
        thawing = sum(e.capacity for e in self.endpoints if e.thawing)
        for endpoint in sorted(self.endpoints, key=lambda e: not e.provisioned):
            if thawing >= len(self.waiters):
                return
            if endpoint.frozen and not endpoint.thawing:
                instance = self.by_id[endpoint.instance_id]
                instance.thaw_requested_at = self.now
                thawing += endpoint.capacity
                self.result.thaws += 1
                # a thaw asked for mid-freeze waits for the freeze to finish first
                wait_s = 0.0 if instance.frozen else self.timings.freeze_s
                self._push(self.now + wait_s + self.timings.thaw_s, _THAWED, instance)

    # the reconciler ------------------------------------------------------------------------------

    def _tick(self, t: float) -> None:
        if t < self.next_decision_at and not self.waiters:
            self.next_tick = self.next_decision_at
            return
        self._decide()
        if (self.decision.desired == 0 and not self.live and not self.waiters and self.in_flight == 0
                and not self.time_dependent and self.recorder.window_average(
                    self.now, self.kpa.stable_window_s) == 0):
            self.next_tick = _INF  # at zero with nothing in the window: wait for the next request

    def _decide(self) -> None:
        now = self.now
        # ready: the live instances with an endpoint; provisioned: none while the last plan marked
        # none (every instance since started on-demand), else counted
        ready = len(self.endpoints)
        provisioned = sum(i.provisioned for i in self.live) if self.marked else 0
        self.decision, self.state = autoscaler.decide(
            self.kpa, self.provision, self.recorder,
            concurrency=self.spec.concurrency, ready=ready, current_provisioned=provisioned,
            now=now, state=self.state, keep_alive=self.keep_alive, cold_start_s=self.cold_start_s,
        )
        self.next_decision_at = now + self.tick_s
        # while requests wait, every reconciler pass (each RECONCILE_INTERVAL_S) decides again
        self.next_tick = (min(self.next_decision_at, now + RECONCILE_INTERVAL_S) if self.waiters
                          else self.next_decision_at)
        if self.want_timeline:
            self._sample()
        self._act()

    def _act(self) -> None:
        """A reconciler pass: the server's own planner decides what to start, drain and freeze.

        Its plan is empty, and so is skipped, when idle mode is off (nothing to freeze), the
        marking of provisioned instances cannot move (the provisioned count is the one marked at the
        last plan, and either no instance started or drained since, or that count is 0: every
        instance is then on-demand, as every start since was), and the live count is the decision,
        or above it with no idle instance to drain (``planner.scale_in_victims`` takes idle ones;
        the keep-alive policy's scale-in only those idle for their own rank's hold at least,
        ``planner.keep_alive_hold``, and its pass ends by asking for the next one).
        """
        live, decision = self.live, self.decision
        if (not self.idle_mode and decision.provisioned == self.marked
                and (not self.live_changed or self.marked == 0)):
            surplus = len(live) - decision.desired
            if surplus == 0:
                return
            if surplus > 0:
                if decision.keep_idle_s is None:
                    for endpoint in self.endpoints:  # the live instances that are ready
                        if endpoint.in_flight == 0:
                            break  # an idle victim: plan
                    else:
                        return
                else:
                    # keep_alive_scale_in's own test, rank by rank: the provisioned instances come
                    # first in routing order (none while none is marked) and are never drained;
                    # then the ready ones in the order they became ready, which is the endpoints'
                    now, keep_s, warm = self.now, decision.keep_idle_s, decision.keep_warm_s
                    rank = sum(i.provisioned for i in live) if self.marked else 0
                    hold = planner.keep_alive_hold
                    for endpoint in self.endpoints:
                        if endpoint.provisioned:
                            continue
                        if endpoint.in_flight == 0 and now - endpoint.idle_since >= hold(
                                rank, keep_s, warm, False) - HOLD_EPSILON_S:
                            break  # idle for its own hold: plan
                        rank += 1
                    else:
                        self._wake_for_keep_alive()
                        return
        view = planner.FunctionView(1, tuple(map(_view, live)), self.idle_mode,
                                    self.spec.scaling.idle_after_s)
        plan = planner.plan(view, decision, self.now)
        if plan.provisioned or self.marked:  # (none marked: every instance is already on-demand)
            for instance in live:
                instance.provisioned = instance.info.instance_id in plan.provisioned
                if instance.endpoint is not None:
                    instance.endpoint.provisioned = instance.provisioned
        self.marked, self.live_changed = decision.provisioned, False
        for start in plan.start:
            self._spawn(start.provisioned)
        for drain in plan.drain:
            self._drain(self.by_id[drain.instance_id])
        for instance_id in plan.freeze:
            self._freeze(self.by_id[instance_id])
        if decision.keep_idle_s is not None:
            self._wake_for_keep_alive()

    def _spawn(self, provisioned: bool) -> None:
        now = self.now
        resources = self.spec.resources
        self.result.cold_starts += 1
        info = InstanceInfo(
            instance_id=f"{self.name}-{self.result.cold_starts}", function=self.name, revision="1",
            pool=POOL, device="gpu" if self.on_gpu else "cpu",
            gpu_memory_mb=resources.gpu_memory_mb, cpus=resources.cpus, memory_mb=resources.memory_mb,
        )
        instance = _Instance(info, now, provisioned, since=now)  # its ledger opens in STARTING
        self.live.append(instance)
        self.live_changed = True
        self.by_id[info.instance_id] = instance
        self._push(now + self.timings.cold_start_s, _READY, instance)

    def _ready(self, instance: _Instance) -> None:
        now = self.now
        endpoint = Endpoint(instance.info.instance_id, self.spec.concurrency, _NO_CLIENT, ready_at=now,
                            provisioned=instance.provisioned, idle=instance)
        instance.endpoint = endpoint
        self.endpoints.append(endpoint)
        self.cold_start_s = self.cold_starts.observe(self.timings.cold_start_s)
        self._ledger(instance, InstanceState.READY)
        self._dispatch()
        if endpoint.in_flight == 0:
            self._idle(endpoint)

    def _drain(self, instance: _Instance) -> None:
        now = self.now
        instance.draining = True
        self.draining += 1
        self.live.remove(instance)
        self.live_changed = True
        endpoint = instance.endpoint
        assert endpoint is not None
        endpoint.open = False  # as FunctionRoute.remove_endpoint
        self.endpoints.remove(endpoint)
        self._ledger(instance, InstanceState.DRAINING)
        # a frozen instance is thawed before it is stopped (it cannot act on SIGTERM frozen)
        thaw_s = self.timings.thaw_s if endpoint.frozen else 0.0
        self._push(now + thaw_s + self.timings.stop_s, _EXITED, instance)

    def _freeze(self, instance: _Instance) -> None:
        """Idle mode: out of routing at once, frozen (in the ledger) ``freeze_s`` later."""
        instance.freeze_requested_at = self.now
        self._push(self.now + self.timings.freeze_s, _FROZEN, instance)

    def _frozen(self, instance: _Instance) -> None:
        endpoint = instance.endpoint
        if instance.draining or endpoint is None or not endpoint.frozen:
            return
        instance.frozen = True
        self._ledger(instance, InstanceState.FROZEN)

    def _thawed(self, instance: _Instance) -> None:
        now = self.now
        endpoint = instance.endpoint
        assert endpoint is not None
        if instance.frozen:
            instance.frozen = False
            self._ledger(instance, InstanceState.READY)
        endpoint.thawed_at = now
        endpoint.idle_since = now
        instance.freeze_requested_at = None
        instance.thaw_requested_at = None
        self._dispatch()
        if endpoint.in_flight == 0:
            self._idle(endpoint)

    # records -------------------------------------------------------------------------------------

    def _ledger(self, instance: _Instance, state: InstanceState, at: float | None = None) -> None:
        """Close the instance's open interval and open one in ``state`` (STOPPED opens none)."""
        now = self.now if at is None else at
        if now > instance.since:
            self.result.intervals.append(_interval(instance.info, instance.state, instance.since, now))
        instance.state, instance.since = state, now

    def _sample(self) -> None:
        starting = sum(1 for i in self.live if i.endpoint is None)
        frozen = sum(1 for i in self.live if i.frozen)
        ready = len(self.live) - starting - frozen
        self.result.timeline.append((self.now, self.in_flight + len(self.waiters),
                                     starting, ready, frozen, self.draining))


class _NoClient:
    """The simulator sends nothing: an endpoint's client is never called."""

    async def request(self, method: str, target: bytes, header_lines: bytes, body: bytes,
                      timeout_s: float) -> UpstreamResponse:
        raise NotImplementedError("the simulator has no instances to send to")

    async def control(self, path: str, timeout_s: float) -> tuple[int, str]:
        raise NotImplementedError("the simulator has no instances to send to")

    async def close(self) -> None:
        return None


_NO_CLIENT = _NoClient()
_new = LedgerInterval.__new__  # object.__new__ in Python; compiled (make sim-compiled), the native one
_set = object.__setattr__


def _interval(info: InstanceInfo, state: InstanceState, start: float, end: float) -> LedgerInterval:
    """``LedgerInterval`` of ``info`` in ``state`` over ``[start, end)``: the same object its
    constructor makes (its fields set one by one, in order), without the checks every row here
    passes by construction: ``state`` is one of the billed states an instance goes through
    (STARTING, READY, FROZEN, DRAINING), the times are the FakeClock's (finite) and ``end >
    start``, and the resources were checked once for the function (``FunctionSim.__init__``).
    Compiled with mypyc (``make sim-compiled``) this is still the fast way: the constructor a
    compiled dataclass gets is the interpreted one, which sets the same fields the same way."""
    interval = _new(LedgerInterval)
    _set(interval, "instance_id", info.instance_id)
    _set(interval, "function", info.function)
    _set(interval, "revision", info.revision)
    _set(interval, "pool", info.pool)
    _set(interval, "device", info.device)
    _set(interval, "gpu_memory_mb", info.gpu_memory_mb)
    _set(interval, "cpus", info.cpus)
    _set(interval, "memory_mb", info.memory_mb)
    _set(interval, "state", state)
    _set(interval, "start", start)
    _set(interval, "end", end)
    _set(interval, "node", info.node)
    return interval


def _view(instance: _Instance) -> planner.InstanceView:
    """The instance as the planner sees it: its state derived from the same facts the server has
    (the last view again while they are the same: its id, start and ready time never change)."""
    endpoint = instance.endpoint
    if endpoint is None:
        state, in_flight, idle_since = InstanceState.STARTING, 0, None
    else:
        in_flight, idle_since = endpoint.in_flight, endpoint.idle_since
        if instance.frozen:
            state = InstanceState.FROZEN
        else:
            state = InstanceState.BUSY if in_flight else InstanceState.READY
    transition = instance.thaw_requested_at is not None or (
        instance.freeze_requested_at is not None and not instance.frozen)
    view = instance.view
    if (view is not None and view.state is state and view.in_flight == in_flight
            and view.idle_since == idle_since and view.idle_transition is transition):
        return view
    view = instance.view = planner.InstanceView(
        id=instance.info.instance_id, revision=1, state=state, started_at=instance.started_at,
        ready_at=endpoint.ready_at if endpoint is not None else None, in_flight=in_flight,
        idle_since=idle_since, idle_transition=transition)
    return view
