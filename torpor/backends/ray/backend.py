"""``RayBackend``: instances on the nodes of a Ray cluster, placed by Ray, in priority pools.

How one instance starts:

1. its spec's resources become a Ray demand (CPU, memory, GPU or a fraction of one) plus its pool's
   ``pool:P`` marker; the pure ``placement_attempts`` orders the pools to try: fixed pools with room,
   highest priority first, each briefly, then the elastic pool, waited on;
2. a one-bundle placement group reserves the demand: Ray's scheduler picks the node, and a group
   that cannot be placed is demand Ray's autoscaler sees and answers by adding a node;
3. the node's agent (``agent.NodeAgent``, created on first use, pinned there with 0 CPUs) fetches
   the revision's code from the object store once, forks the instance from its template and
   returns the node's IP and the instance's port; the gateway dials ``Address.tcp(ip, port)``.

Node loss: every agent is pinged each ``poll_s``; an agent that died (or whose node Ray reports
dead, or that has not answered for ``node_lost_after_s``) loses its node: every instance there
ends with ``Exit(None, "node <id> lost")`` at once, and its placement groups are removed.

Ray is imported only by this package, which torpor imports only when the Ray backend is chosen.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from torpor.address import Address
from torpor.backends import (
    BackendError,
    Exit,
    InstancePlan,
    NodeInfo,
    RevisionPlan,
    StartedInstance,
    StartFailed,
    UnknownInstance,
)
from torpor.backends.ray.agent import NodeAgent
from torpor.backends.ray.config import RayConfig
from torpor.backends.ray.resources import bundle, for_display, ray_demand
from torpor.backends.ray.shipping import code_archive, model_archive
from torpor.clock import Clock, MonotonicClock
from torpor.placement.pools import Pool, placement_attempts, pool_of

log = logging.getLogger(__name__)
T = TypeVar("T")
KEEP_EXITED = 256  # exited instances remembered for log_tail()
SIGNAL_CHECK_S = 2.0  # an instance killed by a signal: its agent's answer to a ping within this says
# whether its node is still there (a node removed at once may kill the instance before its agent)
AGENT_START_S = 60.0  # a new Ray worker process for the node's agent, then its first ping


@dataclass
class _Node:
    info: NodeInfo  # for display (memory in MB, Ray's internal entries left out)
    ip: str
    total: dict[str, float] = field(default_factory=dict)  # in Ray's names and units
    agent: Any = None  # the agent actor's handle, once created
    agent_ready: asyncio.Future[Any] | None = None
    last_pong: float = 0.0
    lost: bool = False
    starting: int = 0  # starts between reserving room here and recording the instance
    empty_since: float | None = None  # when its last instance ended (elastic nodes)


@dataclass
class _Instance:
    instance_id: str
    function: str
    node: str
    pool: str
    group: PlacementGroup
    agent: Any
    exit: asyncio.Future[Exit] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    log_tail: str = ""
    revision: int = 0


async def _within(awaitable: Awaitable[T], timeout_s: float) -> T:
    async def run() -> T:
        return await awaitable

    return await asyncio.wait_for(run(), timeout_s)


class RayBackend:
    """An :class:`~torpor.backends.InstanceBackend` on a Ray cluster (see the module docstring)."""

    name = "ray"
    # Ray's scheduler reserves a GPU instance's GPUs (a fraction of one for a slice): torpor's own
    # GPU placement is skipped. Not yet: CUDA_VISIBLE_DEVICES / TORPOR_GPU_MEMORY_MB in the instance
    # (the node agent's LocalBackend has no GPU inventory), so it sees all of its node's GPUs.
    places_gpus = True

    def __init__(self, config: RayConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self._nodes: dict[str, _Node] = {}
        self._instances: dict[str, _Instance] = {}
        self._exited: OrderedDict[str, _Instance] = OrderedDict()
        self._archives: dict[tuple[str, int], dict[str, Any]] = {}
        self._reserved: dict[str, tuple[str, dict[str, float]]] = {}  # instance → node, demand
        self._placing = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._own_ray = False

    # -- lifecycle of the backend ---------------------------------------------------------------

    async def startup(self) -> None:
        if not ray.is_initialized():
            await asyncio.to_thread(ray.init, address=self.config.address,
                                    namespace=self.config.namespace, log_to_driver=False)
            self._own_ray = True
        await self._refresh()
        self._monitor = asyncio.create_task(self._watch_nodes())

    async def shutdown(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        for node in self._nodes.values():
            if node.agent is not None and not node.lost:
                try:
                    await _within(node.agent.shutdown.remote(), 10.0)
                except (RayError, TimeoutError):
                    pass
                _kill(node.agent)
        for instance in list(self._instances.values()):
            self._finish(instance, Exit(None, "backend shut down"))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._own_ray:
            ray.shutdown()

    # -- revisions ------------------------------------------------------------------------------

    def prepare(self, plan: RevisionPlan) -> None:
        """Put the revision's code (and model files) into Ray's object store, once."""
        self._archive(plan)

    def _archive(self, plan: RevisionPlan) -> dict[str, Any]:
        key = (plan.function, plan.revision)
        if key not in self._archives:
            data, digest = code_archive(plan.code)
            entry: dict[str, Any] = {"code": (digest, [ray.put(data)]), "model": None}
            if plan.model is not None:
                model, model_digest, name = model_archive(plan.model)
                entry["model"] = ((model_digest, [ray.put(model)]), name)
            self._archives[key] = entry
        return self._archives[key]

    def retire(self, function: str, revision: int | None = None) -> None:
        """Drop the revision's archives (``None``: every revision's) and the nodes' templates; a
        later start of it puts its code into the object store again."""
        for key in [k for k in self._archives if k[0] == function and revision in (None, k[1])]:
            del self._archives[key]
        for node in self._nodes.values():
            if node.agent is not None and not node.lost:
                node.agent.retire.remote(function, revision)

    # -- instances ------------------------------------------------------------------------------

    async def start(self, plan: InstancePlan) -> StartedInstance:
        spec = plan.spec
        demand = ray_demand(spec.resources, self.config.gpu_memory_mb_per_gpu,
                            self.config.ask_memory)
        archive = self._archive(plan.revision)
        group, node_id = await self._reserve(plan, demand)
        node = self._nodes[node_id]
        node.starting += 1
        agent = None
        try:
            agent = await self._agent(node)
            reply = await agent.start.remote(plan.instance_id, plan.revision.function,
                                             plan.revision.revision, spec, archive["code"],
                                             archive["model"])
        except (RayError, TimeoutError) as exc:
            self._release(plan.instance_id, group)
            raise StartFailed(f"node {node_id} could not start the instance: {exc}") from None
        except BaseException:  # cancelled: nothing may stay reserved or running for it
            self._release(plan.instance_id, group)
            if agent is not None:
                agent.stop.remote(plan.instance_id, 0.0)
            raise
        finally:
            node.starting -= 1
        if "error" in reply:
            self._release(plan.instance_id, group)
            raise StartFailed(reply["error"], log_tail=reply.get("log_tail", ""))
        instance = _Instance(plan.instance_id, spec.name, node_id, node.info.pool, group, agent,
                             revision=plan.revision.revision)
        self._instances[plan.instance_id] = instance
        self._background(self._watch_instance(instance))
        return StartedInstance(
            address=Address.tcp(reply["host"], int(reply["port"])), node=node_id, pool=node.info.pool,
            forked=bool(reply["forked"]),
            detail={**reply["detail"], "node_ip": node.ip},
        )

    async def _reserve(self, plan: InstancePlan, demand: dict[str, float]
                       ) -> tuple[PlacementGroup, str]:
        """A placed placement group for the instance, and its node."""
        pools = {p.name: p for p in self.config.pools}
        async with self._placing:  # one decision at a time: each sees the reservations before it
            allowed = plan.pools or tuple(plan.spec.placement.pools)
            attempts = placement_attempts(self.config.pools, demand, self._free_by_node(), allowed)
            if not attempts:
                raise StartFailed(f"no configured pool among {list(allowed)}")
            for attempt in attempts[:-1]:
                placed = await self._try(plan.instance_id, demand, pools[attempt.pool],
                                         self.config.try_s)
                if placed is not None:
                    return placed
        last = pools[attempts[-1].pool]
        wait_s = self.config.wait_s if attempts[-1].wait else self.config.try_s
        placed = await self._try(plan.instance_id, demand, last, wait_s)
        if placed is None:
            wanted = ", ".join(f"{k}={v:g}" for k, v in demand.items())
            raise StartFailed(f"no node in pool {last.name!r} had room for {wanted} "
                              f"within {wait_s:g}s")
        return placed

    async def _try(self, instance_id: str, demand: dict[str, float], pool: Pool, timeout_s: float
                   ) -> tuple[PlacementGroup, str] | None:
        group = placement_group([bundle(demand, pool)], strategy="STRICT_PACK",
                                name=f"torpor-{instance_id}")
        try:
            await _within(group.ready(), timeout_s)
        except TimeoutError:
            remove_placement_group(group)
            return None
        except BaseException:  # cancelled while waiting (e.g. for the elastic pool to grow)
            remove_placement_group(group)
            raise
        table = await asyncio.to_thread(ray.util.placement_group_table, group)
        node_id = str(table["bundles_to_node_id"][0])
        self._reserved[instance_id] = (node_id, demand)
        if node_id not in self._nodes:
            await self._refresh()
        return group, node_id

    def _release(self, instance_id: str, group: PlacementGroup) -> None:
        self._reserved.pop(instance_id, None)
        try:
            remove_placement_group(group)
        except RayError:
            pass

    def _free_by_node(self) -> list[tuple[str, dict[str, float]]]:
        """Each live node's pool and what this backend has not reserved there.

        Exact and never stale (Ray's own per-node report lags placements and removals by up to a
        second, which would send a burst to the wrong pool). Room taken by other Ray users is not
        seen here: Ray's scheduler then leaves the group pending and the next pool is tried after
        ``try_s``.
        """
        ours: dict[str, dict[str, float]] = {}
        for node_id, demand in self._reserved.values():
            used = ours.setdefault(node_id, {})
            for key, amount in demand.items():
                used[key] = used.get(key, 0.0) + amount
        free = []
        for node_id, node in self._nodes.items():
            if node.lost or not node.info.alive:
                continue
            used = ours.get(node_id, {})
            free.append((node.info.pool, {k: v - used.get(k, 0.0) for k, v in node.total.items()}))
        return free

    async def _agent(self, node: _Node) -> Any:
        """The node's agent, created (and pinged once) on first use."""
        ready = node.agent_ready
        if ready is None:
            ready = node.agent_ready = asyncio.get_running_loop().create_future()
            try:
                node.agent = ray.remote(NodeAgent).options(
                    num_cpus=0, max_concurrency=1000, max_restarts=0,
                    namespace=self.config.namespace,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node.info.id, soft=False),
                ).remote(node.info.id, node.ip, f"{self.config.node_root}/{node.info.id[:12]}",
                         self.config.freezer)
                await _within(node.agent.ping.remote(), AGENT_START_S)
                node.last_pong = self.clock.now()
                ready.set_result(node.agent)
            except BaseException as exc:
                if node.agent is not None:
                    _kill(node.agent)
                node.agent, node.agent_ready = None, None
                ready.set_exception(exc)
                ready.exception()  # retrieved: concurrent starts on this node get it too
                raise
        return await asyncio.shield(ready)

    async def _watch_instance(self, instance: _Instance) -> None:
        try:
            reply = await instance.agent.wait.remote(instance.instance_id)
            instance.log_tail = reply.get("log_tail", "")
            exit_ = Exit(reply.get("code"))
            if exit_.code is not None and exit_.code < 0 and not await self._agent_alive(instance):
                # killed by a signal as its node went down: a node removed at once kills the
                # instance with everything else there, and its agent may still answer first
                exit_ = Exit(exit_.code, f"node {instance.node} lost")
        except RayActorError:
            exit_ = Exit(None, f"node {instance.node} lost")
        except RayError as exc:
            exit_ = Exit(None, f"node {instance.node}: {exc}")
        self._finish(instance, exit_)

    async def _agent_alive(self, instance: _Instance) -> bool:
        """Whether the instance's node agent still answers (within SIGNAL_CHECK_S)."""
        try:
            await _within(instance.agent.ping.remote(), SIGNAL_CHECK_S)
        except (RayError, TimeoutError):
            return False
        return True

    def _finish(self, instance: _Instance, exit_: Exit) -> None:
        if not instance.exit.done():
            instance.exit.set_result(exit_)
        if self._instances.pop(instance.instance_id, None) is not None:
            self._release(instance.instance_id, instance.group)
            self._exited[instance.instance_id] = instance
            while len(self._exited) > KEEP_EXITED:
                self._exited.popitem(last=False)

    def _get(self, instance_id: str) -> _Instance:
        instance = self._instances.get(instance_id) or self._exited.get(instance_id)
        if instance is None:
            raise UnknownInstance(f"no instance {instance_id} on the Ray backend")
        return instance

    async def wait(self, instance_id: str) -> Exit:
        return await asyncio.shield(self._get(instance_id).exit)

    async def stop(self, instance_id: str, grace_s: float) -> Exit:
        try:
            instance = self._get(instance_id)
        except UnknownInstance:
            return Exit(None)
        if not instance.exit.done():
            try:
                await _within(instance.agent.stop.remote(instance_id, grace_s), grace_s + 10.0)
            except (RayError, TimeoutError):
                pass  # its node is gone or going: the node watch ends it
            try:
                return await _within(asyncio.shield(instance.exit), 5.0)
            except TimeoutError:
                return Exit(None, f"no exit reported by node {instance.node}")
        return instance.exit.result()

    async def freeze(self, instance_id: str) -> None:
        await self._call(instance_id, "freeze")

    async def thaw(self, instance_id: str) -> None:
        await self._call(instance_id, "thaw")

    async def _call(self, instance_id: str, method: str) -> None:
        instance = self._get(instance_id)
        if instance.exit.done():
            raise BackendError(f"instance {instance_id} has exited")
        try:
            await getattr(instance.agent, method).remote(instance_id)
        except RayError as exc:
            raise BackendError(f"could not {method} {instance_id} on node {instance.node}: "
                               f"{exc}") from None

    def log_tail(self, instance_id: str, max_lines: int = 20) -> str:
        """From the agent while the instance runs (a short blocking call: the protocol's method is
        synchronous), else what the agent sent when it exited."""
        try:
            instance = self._get(instance_id)
        except UnknownInstance:
            return ""
        if instance.exit.done():
            return "\n".join(instance.log_tail.splitlines()[-max_lines:])
        try:
            return str(ray.get(instance.agent.log_tail.remote(instance_id, max_lines), timeout=2.0))
        except RayError:
            return ""

    def function_info(self, function: str, revision: int | None = None) -> dict[str, Any] | None:
        revisions = sorted(rev for name, rev in self._archives
                           if name == function and revision in (None, rev))
        if not revisions:
            return None
        nodes = sorted({i.node for i in self._instances.values() if i.function == function
                        and revision in (None, i.revision)})
        return {"backend": "ray", "revisions": revisions, "nodes": nodes}

    @property
    def pool_priorities(self) -> dict[str, int]:
        return {p.name: p.priority for p in self.config.pools}

    def health(self) -> dict[str, Any]:
        alive = [n for n in self._nodes.values() if n.info.alive and not n.lost]
        return {"backend": "ray", "address": self.config.address, "nodes": len(alive),
                "agents": sum(n.agent is not None for n in alive),
                "instances": len(self._instances)}

    def nodes(self) -> list[NodeInfo]:
        return [n.info for n in self._nodes.values()]

    # -- nodes ----------------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Ray's node table and per-node availability into ``_nodes``; dead nodes are lost."""
        table, available = await asyncio.to_thread(_cluster_state)
        for entry in table:
            node_id = str(entry["NodeID"])
            total = {k: float(v) for k, v in entry.get("Resources", {}).items()}
            free = available.get(node_id, {})
            allocated = {k: max(0.0, v - float(free.get(k, 0.0))) for k, v in total.items()}
            info = NodeInfo(
                id=node_id, address=str(entry["NodeManagerAddress"]), pool=pool_of(total),
                resources_total=for_display(total), resources_allocated=for_display(allocated),
                alive=bool(entry["Alive"]),
            )
            node = self._nodes.get(node_id)
            if node is None:
                node = self._nodes[node_id] = _Node(info, info.address)
            elif node.lost:
                continue
            node.info, node.total = info, total
            if not info.alive:
                node.lost = True  # for good: a node that comes back is a new node id
                self._lose(node, "Ray reports it dead")

    async def _watch_nodes(self) -> None:
        while True:
            await self.clock.sleep(self.config.poll_s)
            try:
                await self._refresh()
            except Exception as exc:  # the watch must outlive a GCS hiccup
                log.warning("could not read Ray's node table: %s", exc)
            await asyncio.gather(*(self._ping(n) for n in self._nodes.values()
                                   if n.agent is not None and not n.lost))
            self._release_empty_elastic_agents()

    def _release_empty_elastic_agents(self) -> None:
        """Stop the agent of an elastic node that has had no instance for ``elastic_linger_s``, so
        that Ray sees the node idle and its autoscaler can release it."""
        elastic = {p.name for p in self.config.pools if p.elastic}
        busy = {i.node for i in self._instances.values()}
        now = self.clock.now()
        for node in self._nodes.values():
            if node.agent is None or node.lost or node.info.pool not in elastic:
                continue
            if node.info.id in busy or node.starting:
                node.empty_since = None
                continue
            if node.empty_since is None:
                node.empty_since = now
            elif now - node.empty_since >= self.config.elastic_linger_s:
                agent, node.agent, node.agent_ready, node.empty_since = node.agent, None, None, None
                log.info("node %s (elastic pool %s) is empty: its agent stops so Ray can release it",
                         node.info.id, node.info.pool)
                _kill(agent)

    async def _ping(self, node: _Node) -> None:
        agent = node.agent  # a ping's failure speaks only for the agent it was sent to
        try:
            await _within(agent.ping.remote(), self.config.node_lost_after_s)
            node.last_pong = self.clock.now()
        except RayActorError:
            if node.agent is agent:
                self._lose(node, "its agent died")
            return
        except (RayError, TimeoutError):
            pass
        silent_s = self.clock.now() - node.last_pong
        if node.agent is agent and silent_s > self.config.node_lost_after_s:
            self._lose(node, f"its agent did not answer for {self.config.node_lost_after_s:g}s")

    def _lose(self, node: _Node, why: str) -> None:
        """Its instances end now, with the reason ``node <id> lost``, and its agent is dropped
        (killed, so that a silent agent takes its instances with it). A node Ray still reports
        alive gets a new agent on its next instance."""
        victims = [i for i in self._instances.values() if i.node == node.info.id]
        if victims or node.agent is not None:
            log.warning("node %s lost (%s): %d instance(s) ended", node.info.id, why, len(victims))
        for instance in victims:
            self._finish(instance, Exit(None, f"node {node.info.id} lost"))
        agent, node.agent, node.agent_ready, node.empty_since = node.agent, None, None, None
        if agent is not None:
            _kill(agent)

    def _background(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _kill(actor: Any) -> None:
    try:
        ray.kill(actor)
    except (RayError, ValueError):
        pass


def _cluster_state() -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Ray's node table and each live node's available resources (blocking GCS calls)."""
    from ray._private import state

    nodes: Any = ray.nodes  # untyped in Ray
    available: Any = state.available_resources_per_node
    return nodes(), available()
