"""The platform: store, code store, model cache, backend, reconciler and clock put together, with
deploy/delete semantics and the read model the API reads (``describe``, ``health``).

Deploy validates the whole spec against the uploaded code before anything is written, so a bad spec
never half-deploys; the spec is stored with the code's digest, then installed in the reconciler,
which replaces old instances without dropping in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from torpor.autoscaling.scaling_policies import (
    ProvisionConfig,
    parse_provision_config,
    to_fc_json,
)
from torpor.backends import CodeRef, InstanceBackend
from torpor.cache import CachedModel, ModelCache
from torpor.clock import Clock, SystemClock
from torpor.code import CodeError, CodeStore
from torpor.config import load_server_config
from torpor.errors import BadRequest, NotFound, SpecError
from torpor.lifecycle.deploy_check import handler_problem
from torpor.lifecycle.instance import FunctionRuntime
from torpor.lifecycle.reconciler import Reconciler
from torpor.lifecycle.template_idle import load_template_settings
from torpor.metering import billing, ledger
from torpor.metering.prices import load_prices
from torpor.placement.gpus import GpuDevice, GpuRequest, GpuSource, held_mb, unplaceable
from torpor.spec import (
    FunctionSpec,
    is_package_model,
    load_spec_file,
    package_model_problem,
    parse_spec,
    resolve_model_path,
)
from torpor.store import Store

log = logging.getLogger(__name__)

DB_FILENAME = "torpor.db"
CONFIG_FILENAME = "config.yaml"  # the server config (price table) when --config is not given
MAX_BILL_AHEAD_S = 366 * 86_400.0  # a bill's window may not end later than this after now


class Platform:
    def __init__(self, data_dir: Path, clock: Clock | None = None,
                 config_path: Path | None = None, backend: InstanceBackend | None = None,
                 gpu_source: GpuSource | None = None) -> None:
        self.data_dir = data_dir
        if config_path is None and (data_dir / CONFIG_FILENAME).is_file():
            config_path = data_dir / CONFIG_FILENAME
        self.prices = load_prices(config_path)  # a bad config stops the server before it starts
        self.config = load_server_config(config_path)
        self.clock = clock or SystemClock()
        self.store = Store(data_dir / DB_FILENAME)
        self.cache = ModelCache.in_data_dir(data_dir)
        self.code = CodeStore.in_data_dir(data_dir)
        if backend is None:
            from torpor.backends.local import LocalBackend
            from torpor.backends.local.nvml import NvmlSource, discover_gpus

            declared = self.config.gpus
            gpus = discover_gpus() if declared is None else tuple(
                GpuDevice(index, gpu.name, gpu.memory_mb) for index, gpu in enumerate(declared))
            local = LocalBackend(data_dir, self.clock, gpus=gpus)
            if gpu_source is None and declared is None and gpus:
                gpu_source = NvmlSource(pids=local.instance_pids)
            backend = local
        self.backend = backend
        self.gpu_source = gpu_source  # per-device utilisation and memory for /metrics
        self.reconciler = Reconciler(self.store, self.clock, backend,
                                     gpu_quota=self.config.limits.gpus, gpu_source=gpu_source)
        self.reconciler.template_retire_idle_s = load_template_settings(config_path).retire_idle_s
        from torpor.api.metrics import Metrics  # the platform owns its metrics; they read it

        self.metrics = Metrics(self)
        self.reconciler.on_ready = self.metrics.observe_cold_start
        self.reconciler.ledger.on_transition = self.metrics.usage.transition
        self.reconciler.idle.on_thawed = self.metrics.observe_thaw
        from torpor.api.gpu_metrics import GpuCollector

        self.metrics.registry.register(GpuCollector(self))

    @property
    def functions(self) -> dict[str, FunctionRuntime]:
        return self.reconciler.functions

    async def startup(self) -> None:
        """Close what a previous server left open, restore deployed functions, start reconciling."""
        await self.backend.startup()
        # What a crashed server left open ends at its last heartbeat: the last moment it was
        # known to be alive (a clean stop closes everything itself).
        last_alive = await self.store.run(self.store.last_heartbeat) or self.clock.now()
        closed = await self.store.run(self.store.close_open_instances, last_alive)
        intervals = await self.store.run(self.store.close_open_intervals, last_alive)
        if closed or intervals:
            log.info("closed %d instance records and %d ledger intervals left open by a previous "
                     "server at its last heartbeat", closed, intervals)
        for record in await self.store.run(self.store.list_functions):
            code = self.code.get(record.code_digest) if record.code_digest else None
            if code is None and record.code_digest is None and Path(record.base_dir).is_dir():
                # deployed by a torpor that ran code from the user's folder: keep a copy now
                code = await asyncio.to_thread(self.code.put_dir, Path(record.base_dir))
            if code is None:
                log.error("cannot restore function %s: its code %s is no longer in %s",
                          record.name, record.code_digest or record.base_dir, self.code.root)
                continue
            try:
                spec = parse_spec(record.spec, source=record.source, base_dir=code.path,
                                  check_model_path=False)
            except SpecError as exc:
                log.error("cannot restore function %s: %s", record.name, exc)
                continue
            model = None
            if record.model_digest is not None:
                cached = self.cache.get(record.model_digest)
                if cached is None:
                    log.error("cannot restore function %s: its model %s is no longer in the cache",
                              record.name, record.model_digest)
                    continue
                model = CodeRef(cached.digest, cached.path)
            self.reconciler.apply(spec, record.revision, code, record.source,
                                  record.created_at, record.updated_at,
                                  await self._stored_provision(record.name), model)
        self.reconciler.start()

    async def _stored_provision(self, name: str) -> ProvisionConfig | None:
        data = await self.store.run(self.store.get_provision, name)
        return ProvisionConfig.model_validate(data) if data is not None else None

    async def shutdown(self) -> None:
        await self.reconciler.shutdown()
        self.store.close()

    # deploy ------------------------------------------------------------------------------------

    async def put_code(self, data: bytes, digest: str) -> CodeRef:
        """Keep an uploaded archive (checked against its sha256 ``digest``, unpacked once)."""
        try:
            return await asyncio.to_thread(self.code.put, data, digest)
        except CodeError as exc:
            raise BadRequest(str(exc)) from None

    def code_ref(self, digest: str, what: str) -> CodeRef:
        try:
            ref = self.code.get(digest)
        except CodeError as exc:
            raise BadRequest(f"{what}: {exc}") from None
        if ref is None:
            raise BadRequest(f"{what}: no uploaded code with digest {digest}; upload it first "
                             f"(PUT /api/v1/code/{digest})")
        return ref

    async def deploy(self, raw: dict[str, Any], code: CodeRef, source: str,
                     model_code: CodeRef | None = None) -> FunctionRuntime:
        """Deploy ``raw`` (the spec) running ``code``; ``model_code``: model.path uploaded apart
        (it was outside the function's folder)."""
        spec = parse_spec(raw, source=source, base_dir=code.path, check_model_path=False)
        self._check_pools(spec, source)
        self._check_placeable(spec, source)
        problem = await handler_problem(spec, code.path)
        if problem is not None:
            raise SpecError(source, [problem])
        model_source = self._model_source(spec, code, model_code, source)
        cached = await self._cache_model(model_source, source)
        record = await self.store.run(
            self.store.put_function, spec.name, raw, str(code.path), source, self.clock.now(),
            cached.digest if cached else None, code.digest,
        )
        model = CodeRef(cached.digest, cached.path) if cached is not None else None
        fn = self.reconciler.apply(spec, record.revision, code, source, record.created_at,
                                   record.updated_at, await self._stored_provision(spec.name), model)
        if cached is not None:
            verb = "already cached" if cached.hit else "cached"
            await self.store.run(self.store.add_event, spec.name, self.clock.now(), "model",
                                 f"model.path {verb} as {cached.digest[:12]} "
                                 f"({cached.size_bytes} bytes, {cached.files} files)")
        await self.store.run(self.store.add_event, spec.name, self.clock.now(), "deployed",
                             f"revision {record.revision} deployed from {source} "
                             f"(code {code.digest[:12]})")
        return fn

    def _check_placeable(self, spec: FunctionSpec, source: str) -> None:
        """Refuse a spec no node could ever hold (a slice larger than every GPU, too many GPUs);
        a backend that places GPUs itself (Ray) answers for its own cluster."""
        if self.backend.places_gpus:
            return
        resources = spec.resources
        problem = unplaceable(self.reconciler.gpu_nodes(),
                              GpuRequest(gpus=resources.gpus, gpu_memory_mb=resources.gpu_memory_mb),
                              self.config.limits.gpus)
        if problem is not None:
            field, message = problem
            raise SpecError(source, [f"{field}: {message}"])

    async def deploy_folder(self, path: Path) -> FunctionRuntime:
        """Deploy a spec file or folder on this machine (``torpor serve --deploy``): its code is
        packed and kept like an upload, so the server never runs from the user's folder."""
        spec, raw, base_dir = load_spec_file(path)
        code = await asyncio.to_thread(self.code.put_dir, base_dir)
        model_code = None
        model_path = resolve_model_path(spec, base_dir)
        if (model_path is not None and not is_package_model(spec)
                and not model_path.is_relative_to(base_dir)):
            model_code = await asyncio.to_thread(self.code.put_dir, model_path)
        return await self.deploy(raw, code, str(path), model_code)

    def _check_pools(self, spec: FunctionSpec, source: str) -> None:
        """``placement.pools`` must name pools this server has (the server config's ``pools``)."""
        known = sorted(self.backend.pool_priorities)
        for i, name in enumerate(spec.placement.pools):
            if name not in known:
                raise SpecError(source, [f"placement.pools[{i}]: unknown pool {name!r}; "
                                         f"pools: {', '.join(known)}"])

    @staticmethod
    def _model_source(spec: FunctionSpec, code: CodeRef, model_code: CodeRef | None,
                      source: str) -> Path | None:
        """Where model.path's files are on this machine: in the uploaded code, or uploaded apart."""
        if spec.model is None:
            if model_code is not None:
                raise SpecError(source, ["model: a model was uploaded but the spec has no model.path"])
            return None
        if is_package_model(spec):  # a file of a package installed here
            problem = package_model_problem(spec)
            if problem is not None:
                raise SpecError(source, [problem])
            return resolve_model_path(spec, code.path)
        if model_code is not None:
            return model_code.path
        path = resolve_model_path(spec, code.path)
        assert path is not None
        if Path(spec.model.path).expanduser().is_absolute() or not path.is_relative_to(code.path):
            raise SpecError(source, [f"model.path: {spec.model.path} is outside the function's "
                                     "folder; torpor deploy uploads such a folder on its own"])
        if not path.exists():
            raise SpecError(source, [f"model.path: {spec.model.path} is not in the uploaded folder"])
        return path

    async def _cache_model(self, model_path: Path | None, source: str) -> CachedModel | None:
        """Copy model.path into the content-addressed cache (a no-op copy when already there)."""
        if model_path is None:
            return None
        try:
            return await asyncio.to_thread(self.cache.put, model_path, True)
        except SpecError as exc:
            raise SpecError(source, exc.errors) from None

    # the read model ----------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any]:
        """A function as the API shows it."""
        return function_to_api(self.function(name), self.template_info(name))

    def template_info(self, name: str) -> dict[str, Any] | None:
        """What the backend holds for the function between instances, or when it was retired."""
        info = self.backend.function_info(name)
        if info is not None:
            return info
        retired_at = self.reconciler.retired_templates.get(name)
        if retired_at is None:
            return None
        return {"state": "retired", "retired_at": retired_at,
                "reason": f"no instance and no request for "
                          f"{self.reconciler.template_retire_idle_s:g}s; "
                          "the next cold start rebuilds it"}

    def template_memory(self) -> dict[str, int]:
        """Bytes held by each function's template (and its spare), for /metrics."""
        held = {}
        for name in self.functions:
            info = self.backend.function_info(name)
            if info is not None and isinstance(info.get("memory_bytes"), int):
                held[name] = info["memory_bytes"]
        return held

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "functions": len(self.functions), **self.backend.health()}

    def nodes(self) -> list[dict[str, Any]]:
        by_node: dict[str, list[str]] = {}
        for fn in self.functions.values():
            for instance in fn.live(current_only=False):
                by_node.setdefault(instance.node or "", []).append(instance.id)
        return [{"id": n.id, "address": n.address, "pool": n.pool, "alive": n.alive,
                 "resources_total": n.resources_total,
                 "resources_allocated": n.resources_allocated,
                 "instances": sorted(by_node.get(n.id, [])),
                 "gpus": self._gpus_to_api(n.id, n.gpus)}
                for n in self.backend.nodes()]

    def _gpus_to_api(self, node: str, devices: tuple[GpuDevice, ...]) -> list[dict[str, Any]]:
        """Each GPU of a node: index, name, total and allocated memory, the instances on it."""
        placements = self.reconciler.placements
        return [{"index": d.index, "name": d.name, "memory_mb": d.memory_mb,
                 "allocated_mb": held_mb(node, d, placements),
                 "instances": sorted(i for i, p in placements.items()
                                     if p.node == node and d.index in p.gpus)}
                for d in devices]

    def function(self, name: str) -> FunctionRuntime:
        fn = self.functions.get(name)
        if fn is None:
            raise NotFound(f"function {name!r} not found")
        return fn

    async def delete(self, name: str) -> None:
        self.function(name)
        await self.store.run(self.store.delete_function, name)
        await self.reconciler.remove(name)

    async def set_provision(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """Replace a function's provisioning config (torpor's shape or Function Compute's)."""
        self.function(name)
        config = parse_provision_config(data, source="provision config")
        await self.store.run(self.store.put_provision, name, config.model_dump(mode="json"),
                             self.clock.now())
        await self.store.run(self.store.add_event, name, self.clock.now(), "provision",
                             f"provisioning config set: target {config.target}, "
                             f"{len(config.target_tracking)} target-tracking policies, "
                             f"{len(config.scheduled)} scheduled actions")
        self.reconciler.set_provision(name, config)
        return self.provision(name)

    def provision(self, name: str) -> dict[str, Any]:
        """Target and current provisioned instances, as Function Compute's `s provision list`."""
        fn = self.function(name)
        current = sum(1 for i in fn.live() if i.provisioned and i.facts.ready_at is not None)
        return {
            "function": name,
            "target": fn.decision.provisioned,
            "current": current,
            "configured_target": fn.provision.target,
            "reason": fn.decision.reason,
            "config": fn.provision.model_dump(mode="json"),
            "fc": to_fc_json(fn.provision),
        }

    async def bill(self, since: float | None, until: float | None,
                   function: str | None) -> dict[str, Any]:
        """Per-function seconds per state, cost, and an always-on GPU's cost over [since, until)."""
        if function is not None:
            known = function in self.functions or any(
                r.name == function for r in await self.store.run(self.store.list_functions))
            rows_exist = await self.store.run(self.store.ledger_rows, 0.0, float("inf"), function)
            if not known and not rows_exist:
                raise NotFound(f"function {function!r} not found")
        now = self.clock.now()
        for name, value in (("since", since), ("until", until)):
            if value is not None and not 0 <= value <= now + MAX_BILL_AHEAD_S:
                raise BadRequest(f"{name}: {value!r} is not a time between 1970 and a year from now")
        until = now if until is None else until
        # Every view reads every function's rows and the same window, so a function's line is the
        # same in the full bill and with --function.
        rows = await self.store.run(self.store.ledger_rows, since or 0.0, until, None)
        if since is None:  # from the first record
            since = min((row["start"] for row in rows), default=until)
        elif since >= until:
            raise BadRequest(f"since ({since}) must be before until ({until})")
        # always-on covers only the time each function existed within the window
        lifetimes: dict[str, tuple[float, float | None]] = {
            record.name: (record.created_at, None)
            for record in await self.store.run(self.store.list_functions)}
        intervals = ledger.intervals(rows)
        if function is not None:
            intervals = [i for i in intervals if i.function == function]
        result = billing.bill(intervals, self.prices, since, until, function, lifetimes).to_json()
        result["pools"] = [
            {"pool": pool, "active_seconds": part["active_seconds"],
             "idle_seconds": part["idle_seconds"], "cost": part["cost"]}
            for pool in sorted({i.pool for i in intervals})
            for part in [_totals(billing.bill([i for i in intervals if i.pool == pool], self.prices,
                                              since, until, function, lifetimes).to_json())]
        ]
        return result

    async def events(self, name: str) -> list[dict[str, Any]]:
        return await self.store.run(self.store.list_events, name)

    async def instances(self, function: str | None, include_ended: bool) -> list[dict[str, Any]]:
        if function is not None:
            self.function(function)
        fns = [self.function(function)] if function else list(self.functions.values())
        live = [i.to_api() for fn in fns for i in fn.instances.values()
                if i.facts.exited_at is None]  # instances that failed or stopped are history
        if not include_ended:
            return live
        seen = {i["id"] for i in live}
        ended = await self.store.run(self.store.list_instances, function)
        return live + [row for row in ended if row["id"] not in seen]


def function_to_api(fn: FunctionRuntime, template: dict[str, Any] | None = None) -> dict[str, Any]:
    live = fn.live(current_only=False)
    counts: dict[str, int] = {}
    for instance in live:
        counts[instance.state.value] = counts.get(instance.state.value, 0) + 1
    return {
        "name": fn.name,
        "revision": fn.revision,
        "kind": fn.spec.kind,
        "status": fn.status(),
        "last_error": fn.last_error,
        "url": f"/fn/{fn.name}/",
        "instances": len(live),
        "instance_states": counts,
        "in_flight": fn.route.in_flight,
        "queued": fn.route.queued,
        "concurrency": fn.spec.concurrency,
        "min_instances": fn.spec.scaling.min_instances,
        "max_instances": fn.spec.scaling.max_instances,
        "desired": fn.decision.desired,
        "provisioned": fn.decision.provisioned,
        "panic": fn.decision.panic,
        "scaling_reason": fn.decision.reason,
        "scaling_policy": fn.spec.scaling.policy,
        "scaling_policy_why": ("scaling.policy in the spec" if "policy" in fn.spec.scaling.model_fields_set
                               else "the default"),
        "waiting": fn.waiting,
        "source": fn.source,
        "code_digest": fn.code.digest,
        "created_at": fn.created_at,
        "updated_at": fn.updated_at,
        "template": template,
        "model_digest": fn.model.digest if fn.model else None,
        "spec": fn.spec.model_dump(mode="json"),
    }


def _totals(bill_json: dict[str, Any]) -> dict[str, Any]:
    """A bill's seconds and cost summed over its functions (decimal strings, as in the bill)."""
    from decimal import Decimal

    lines = bill_json["functions"]
    return {key: str(sum((Decimal(line[key]) for line in lines), Decimal(0)))
            for key in ("active_seconds", "idle_seconds")} | {"cost": bill_json["cost"]}
