"""The platform: store, code store, model cache, backend, reconciler and clock put together, with
deploy/delete semantics and the read model the API reads (``describe``, ``health``).

Deploy validates the whole spec against the uploaded code before anything is written, so a bad spec
never half-deploys; every deploy is stored as an immutable, numbered revision (spec, code digest,
model digest, who and when), then installed in the reconciler, which moves traffic without dropping
in-flight requests. Traffic is split between revisions by weight (``set_traffic``, ``deploy(...,
traffic_percent=10)``), pinned by tags (``/fn/NAME@tag/``) and moved back in one step
(``rollback``); a revision that takes no traffic scales to zero and its template is retired.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from torpor.auth import (
    ADMIN_KEY_FILENAME,
    DEFAULT_TENANT,
    Caller,
    KeyRecord,
    KeyTable,
    Quota,
    check_tenant,
    hash_key,
    new_key,
)
from torpor.autoscaling.keepalive import resolve as resolve_policy
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
from torpor.errors import BadRequest, Conflict, NotFound, QuotaExceeded, SpecError
from torpor.gateway.traffic import TrafficConfig, check_tag, parse_weights, shift
from torpor.lifecycle.deploy_check import handler_problem
from torpor.lifecycle.instance import FunctionRuntime, RevisionRuntime
from torpor.lifecycle.reconciler import Reconciler
from torpor.lifecycle.rollout import RolloutConfig
from torpor.lifecycle.template_idle import load_template_settings
from torpor.metering import billing, ledger
from torpor.metering.prices import load_prices
from torpor.placement.gpus import (
    QUOTA_EPSILON,
    GpuDevice,
    GpuRequest,
    GpuSource,
    Placement,
    gpus_held,
    held_mb,
    unplaceable,
)
from torpor.rollouts import Rollouts
from torpor.shared_files import SharedFileError, SharedFiles
from torpor.spec import (
    FunctionSpec,
    is_package_model,
    load_spec_file,
    package_model_problem,
    parse_spec,
    resolve_model_path,
)
from torpor.store import Store
from torpor.store.store import FunctionRecord, RevisionRecord

log = logging.getLogger(__name__)

DB_FILENAME = "torpor.db"
CONFIG_FILENAME = "config.yaml"  # the server config (price table) when --config is not given
MAX_BILL_AHEAD_S = 366 * 86_400.0  # a bill's window may not end later than this after now


class Platform:
    """``store``: a PostgreSQL URL (``--store``; else the config's ``store:``; else SQLite in the
    data directory). ``holder``: this server's name, to hold a shared store's lock under."""

    def __init__(self, data_dir: Path, clock: Clock | None = None,
                 config_path: Path | None = None, backend: InstanceBackend | None = None,
                 gpu_source: GpuSource | None = None, store: str | None = None,
                 holder: str | None = None, auth: bool | None = None) -> None:
        self.data_dir = data_dir
        if config_path is None and (data_dir / CONFIG_FILENAME).is_file():
            config_path = data_dir / CONFIG_FILENAME
        self.prices = load_prices(config_path)  # a bad config stops the server before it starts
        self.config = load_server_config(config_path)
        self.clock = clock or SystemClock()
        if store is not None:
            self.store = Store(store, "--store", holder)
        elif self.config.store is not None:
            self.store = Store(self.config.store, f"store in {config_path}", holder)
        else:
            self.store = Store(data_dir / DB_FILENAME)
        self.cache = ModelCache.in_data_dir(data_dir)
        self.code = CodeStore.in_data_dir(data_dir)
        self.shared = SharedFiles(self.store, self.code, self.cache)
        if backend is None:
            from torpor.backends.local import LocalBackend
            from torpor.backends.local.nvml import NvmlSource, discover_gpus

            declared = self.config.gpus
            gpus = discover_gpus() if declared is None else tuple(
                GpuDevice(index, gpu.name, gpu.memory_mb) for index, gpu in enumerate(declared))
            isolation = self.config.isolation
            try:
                local = LocalBackend(data_dir, self.clock, gpus=gpus,
                                     instance_user=isolation.instance_user,
                                     instance_uids=isolation.uid_range)
            except ValueError as exc:  # a named instance_user that cannot be used here
                raise SpecError(str(config_path or "config"), [str(exc)]) from None
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
        self.rollouts = Rollouts(self)
        # API keys (torpor.auth): ``auth`` overrides the config's auth.enabled (--auth on|off)
        self.keys = KeyTable(self.config.auth.enabled if auth is None else auth)
        self.owners: dict[str, str] = {}  # function → the tenant it belongs to
        self.quotas: dict[str, Quota] = {}  # tenants with quotas set; others have the defaults
        self.reconciler.admit = self._admit

    @property
    def functions(self) -> dict[str, FunctionRuntime]:
        return self.reconciler.functions

    async def startup(self) -> None:
        """Close what a previous server left open, restore deployed functions, start reconciling."""
        await self.backend.startup()
        # What a crashed server left open ends at the last moment it was known to be alive: its
        # last heartbeat or a later ledger write (a clean stop closes everything itself). The same
        # on a shared store after the previous server's machine was lost.
        last_alive = await self.store.run(self.store.last_alive) or self.clock.now()
        closed = await self.store.run(self.store.close_open_instances, last_alive)
        intervals = await self.store.run(self.store.close_open_intervals, last_alive)
        if closed or intervals:
            log.info("closed %d instance records and %d ledger intervals left open by a previous "
                     "server at its last sign of life (%.3f)", closed, intervals, last_alive)
        await self._load_keys()
        for record in await self.store.run(self.store.list_functions):
            try:
                await self._restore(record)
            except (SpecError, BadRequest) as exc:
                log.error("cannot restore function %s: %s", record.name, exc)
        self.reconciler.start()

    async def _bring_back(self, code_digest: str | None, model_digest: str | None) -> None:
        """Copy a revision's code and model from a shared store into this data directory when it
        lacks them (a server on a new machine); a no-op on SQLite."""
        if not self.shared.enabled:
            return
        try:
            if code_digest is not None:
                await asyncio.to_thread(self.shared.code_ref, code_digest)
            if model_digest is not None:
                await asyncio.to_thread(self.shared.model, model_digest)
        except (CodeError, SharedFileError, SpecError) as exc:
            raise BadRequest(f"its files cannot be brought back from the store: {exc}") from None

    async def _keep_shared(self, code: CodeRef, model_digest: str | None) -> None:
        """On a shared store, copy a deploy's code and model into it before the revision is
        written, so that every stored revision can run on another machine."""
        if self.shared.enabled:
            await asyncio.to_thread(self.shared.keep_code, code.digest)
            if model_digest is not None:
                await asyncio.to_thread(self.shared.keep_model, model_digest)

    async def _restore(self, record: FunctionRecord) -> None:
        """Install a stored function: its newest revision and every revision its split names."""
        await self._bring_back(record.code_digest, record.model_digest)
        code = self.code.get(record.code_digest) if record.code_digest else None
        if code is None and record.code_digest is None and Path(record.base_dir).is_dir():
            # deployed by a torpor that ran code from the user's folder: keep a copy now
            code = await asyncio.to_thread(self.code.put_dir, Path(record.base_dir))
        if code is None:
            raise BadRequest(f"its code {record.code_digest or record.base_dir} is no longer in "
                             f"{self.code.root}")
        spec = parse_spec(record.spec, source=record.source, base_dir=code.path,
                          check_model_path=False)
        model = self._cached_model(record.model_digest)
        traffic = (TrafficConfig.from_json(record.traffic) if record.traffic
                   else TrafficConfig.only(record.revision))
        try:
            routed = [await self._revision_record(record.name, n)
                      for n in sorted(traffic.routed - {record.revision})]
            for other in routed:
                await self._bring_back(other.code_digest, other.model_digest)
            others = [(r, self._revision_parts(r)) for r in routed]
        except BadRequest as exc:
            log.error("function %s: %s; all its traffic goes to revision %d", record.name, exc,
                      record.revision)
            others, traffic = [], TrafficConfig.only(record.revision)
        provision = (await self._stored_provision(record.name)
                     or ProvisionConfig(target=spec.scaling.provisioned))
        fn = self.reconciler.install(record.name, record.created_at, record.updated_at, provision)
        self.owners[record.name] = record.owner or DEFAULT_TENANT
        self.reconciler.add_revision(fn, record.revision, spec, code, record.source,
                                     record.updated_at, model)
        fn.latest = record.revision
        for other, (other_spec, other_code, other_model) in others:
            self.reconciler.add_revision(fn, other.number, other_spec, other_code, other.source,
                                         other.created_at, other_model, other.created_by)
        self.reconciler.set_traffic(record.name, traffic)

    def _cached_model(self, digest: str | None) -> CodeRef | None:
        if digest is None:
            return None
        cached = self.cache.get(digest)
        if cached is None:
            raise BadRequest(f"its model {digest} is no longer in the model cache")
        return CodeRef(cached.digest, cached.path)

    async def _load_revisions(self, fn: FunctionRuntime, numbers: frozenset[int]) -> None:
        """Bring stored revisions back into memory (a rollback to one that scaled to zero)."""
        for number in sorted(numbers - fn.revisions.keys()):
            record = await self._revision_record(fn.name, number)
            await self._bring_back(record.code_digest, record.model_digest)
            self._add_stored(fn, record)

    async def _revision_record(self, name: str, number: int) -> RevisionRecord:
        record = await self.store.run(self.store.get_revision, name, number)
        if record is None:
            raise BadRequest(f"revision: {name!r} has no revision {number}")
        return record

    def _add_stored(self, fn: FunctionRuntime, record: RevisionRecord) -> None:
        spec, code, model = self._revision_parts(record)
        self.reconciler.add_revision(fn, record.number, spec, code, record.source,
                                     record.created_at, model, record.created_by)

    def _revision_parts(self, record: RevisionRecord) -> tuple[FunctionSpec, CodeRef, CodeRef | None]:
        what = f"revision {record.number} of {record.function!r}"
        code = self.code.get(record.code_digest) if record.code_digest else None
        if code is None:
            raise BadRequest(f"{what}: its code is no longer kept (deployed by an older torpor)")
        try:
            spec = parse_spec(record.spec, source=record.source, base_dir=code.path,
                              check_model_path=False)
            model = self._cached_model(record.model_digest)
        except (SpecError, BadRequest) as exc:
            raise BadRequest(f"{what} cannot run again: {exc}") from None
        return spec, code, model

    async def _stored_provision(self, name: str) -> ProvisionConfig | None:
        data = await self.store.run(self.store.get_provision, name)
        return ProvisionConfig.model_validate(data) if data is not None else None

    async def shutdown(self) -> None:
        self.rollouts.cancel_all()
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
                     model_code: CodeRef | None = None, traffic_percent: int | None = None,
                     created_by: str | None = None,
                     rollout: RolloutConfig | None = None,
                     caller: Caller | None = None) -> FunctionRuntime:
        """Deploy ``raw`` (the spec) running ``code`` as a new revision; ``model_code``: model.path
        uploaded apart (it was outside the function's folder). ``caller``: who deploys (default:
        the default tenant's admin); a new function is its tenant's. ``traffic_percent``: the new
        revision's share (default 100); the rest stays with the revisions serving now.
        ``rollout``: start at its first step and go on by itself (see ``lifecycle/rollout.py``)."""
        spec = parse_spec(raw, source=source, base_dir=code.path, check_model_path=False)
        self._check_pools(spec, source)
        self._check_placeable(spec, source)
        if spec.isolation == "sandbox":
            problem = await asyncio.to_thread(self._sandbox_problem)
            if problem is not None:
                raise SpecError(source, [problem])
        problem = await self._handler_problem(spec, code.path)
        if problem is not None:
            raise SpecError(source, [problem])
        owner = self._deploy_owner(spec.name, caller)
        existing = self.functions.get(spec.name)
        traffic = None
        old = existing.config.primary if existing is not None else None
        if rollout is not None:
            if traffic_percent is not None:
                raise BadRequest("rollout: give either a rollout or traffic, not both")
            if existing is None or old is None:
                raise BadRequest(f"rollout: {spec.name!r} has no revision yet to roll out from; "
                                 "deploy it first")
            first = rollout.steps[0]
            traffic = {"weights": {str(old): 100 - first, "new": first},
                       "tags": dict(existing.config.tags)}
        elif traffic_percent is not None and traffic_percent != 100:
            if existing is None:
                raise BadRequest(f"traffic: {spec.name!r} has no revision yet to keep "
                                 f"{100 - traffic_percent}% of its traffic; deploy it at 100 first")
            weights = shift({**existing.config.weights, -1: 0}, -1, traffic_percent)
            traffic = {"weights": {("new" if r == -1 else str(r)): w for r, w in weights.items()},
                       "tags": dict(existing.config.tags)}
        model_source = self._model_source(spec, code, model_code, source)
        cached = await self._cache_model(model_source, source)
        await self._keep_shared(code, cached.digest if cached else None)
        record = await self.store.run(
            self.store.put_function, spec.name, raw, str(code.path), source, self.clock.now(),
            cached.digest if cached else None, code.digest, created_by,
            traffic or {"weights": {"new": 100},
                        "tags": dict(existing.config.tags) if existing else {}},
            owner,
        )
        self.owners[spec.name] = owner
        model = CodeRef(cached.digest, cached.path) if cached is not None else None
        config = TrafficConfig.from_json(record.traffic) if record.traffic else None
        fn = self.reconciler.apply(spec, record.revision, code, source, record.created_at,
                                   record.updated_at, await self._stored_provision(spec.name), model,
                                   config, created_by)
        if cached is not None:
            verb = "already cached" if cached.hit else "cached"
            await self.store.run(self.store.add_event, spec.name, self.clock.now(), "model",
                                 f"model.path {verb} as {cached.digest[:12]} "
                                 f"({cached.size_bytes} bytes, {cached.files} files)")
        share = f", {fn.config.weights.get(record.revision, 0)}% of the traffic" if traffic else ""
        await self.store.run(self.store.add_event, spec.name, self.clock.now(), "deployed",
                             f"revision {record.revision} deployed from {source} "
                             f"(code {code.digest[:12]}{share})")
        self.rollouts.cancel(spec.name)
        if rollout is not None and old is not None:
            self.rollouts.start(fn, rollout, record.revision, old)
        return fn

    async def _handler_problem(self, spec: FunctionSpec, code_dir: Path) -> str | None:
        """The deploy check, run as the backend runs the function (its user, its sandbox)."""
        isolated = getattr(self.backend, "check_process", None)
        if isolated is None or spec.runtime.handler is None:
            return await handler_problem(spec, code_dir)
        with isolated(spec, code_dir) as how:
            return await handler_problem(spec, code_dir, how=how)

    def _sandbox_problem(self) -> str | None:
        """Whether this server's backend can run ``isolation: sandbox`` (a backend without the
        check, e.g. Ray's, answers on its nodes when an instance starts)."""
        check = getattr(self.backend, "sandbox_problem", None)
        return check() if check is not None else None

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

    # revisions and traffic ---------------------------------------------------------------------

    async def revisions(self, name: str) -> list[dict[str, Any]]:
        """Every revision of ``name``, oldest first, with its share, tags and live instances."""
        fn = self.function(name)
        config = fn.config
        rows = []
        for record in await self.store.run(self.store.list_revisions, name):
            rev = fn.revisions.get(record.number)
            live = fn.live(record.number)
            rows.append({
                "revision": record.number,
                "percent": config.weights.get(record.number, 0),
                "tags": sorted(t for t, r in config.tags.items() if r == record.number),
                "instances": len(live),
                "in_flight": rev.route.in_flight if rev is not None else 0,
                "requests": rev.route.requests if rev is not None else 0,
                "errors": rev.route.errors if rev is not None else 0,
                "desired": rev.decision.desired if rev is not None else 0,
                "latest": record.number == fn.latest,
                "code_digest": record.code_digest,
                "model_digest": record.model_digest,
                "source": record.source,
                "created_at": record.created_at,
                "created_by": record.created_by,
                "template": self.template_info(name, record.number),
            })
        return rows

    async def set_traffic(self, name: str, raw_weights: dict[str, Any],
                          why: str = "traffic set") -> dict[str, Any]:
        """Split ``name``'s traffic: ``{"3": 90, "4": 10}`` (whole percents summing to 100)."""
        fn = self.function(name)
        self.rollouts.cancel(name)
        known = {r.number for r in await self.store.run(self.store.list_revisions, name)}
        weights = parse_weights(raw_weights, known)
        return await self.move(fn, TrafficConfig(weights, dict(fn.config.tags)), why)

    async def tag(self, name: str, revision: int | None, tag: str) -> dict[str, Any]:
        """Pin ``/fn/NAME@tag/`` to ``revision`` (``None``: remove the tag)."""
        fn = self.function(name)
        check_tag(tag)
        tags = dict(fn.config.tags)
        if revision is None:
            if tags.pop(tag, None) is None:
                raise NotFound(f"function {name!r} has no tag {tag!r}")
            why = f"tag {tag} removed"
        else:
            if await self.store.run(self.store.get_revision, name, revision) is None:
                raise BadRequest(f"revision: {name!r} has no revision {revision}")
            tags[tag] = revision
            why = f"tag {tag} → revision {revision}"
        return await self.move(fn, TrafficConfig(dict(fn.config.weights), tags), why)

    async def rollback(self, name: str, revision: int | None = None) -> dict[str, Any]:
        """All traffic to ``revision`` in one step (default: the revision before the newest one
        taking traffic now). Requests queued or in flight finish where they started."""
        fn = self.function(name)
        self.rollouts.cancel(name)
        if revision is None:
            newest = max(r for r, w in fn.config.weights.items() if w > 0)
            older = [r.number for r in await self.store.run(self.store.list_revisions, name)
                     if r.number < newest]
            if not older:
                raise BadRequest(f"revision: {name!r} has no revision before {newest} to roll "
                                 "back to")
            revision = max(older)
        elif await self.store.run(self.store.get_revision, name, revision) is None:
            raise BadRequest(f"revision: {name!r} has no revision {revision}")
        return await self.move(fn, TrafficConfig.only(revision, fn.config.tags),
                                f"rolled back to revision {revision}")

    async def move(self, fn: FunctionRuntime, config: TrafficConfig, why: str) -> dict[str, Any]:
        """Install a split (loading the revisions it names), store it and record why."""
        await self._load_revisions(fn, config.routed)
        await self.store.run(self.store.put_traffic, fn.name, config.to_json(), self.clock.now())
        self.reconciler.set_traffic(fn.name, config)
        split = ", ".join(f"{r}={w}" for r, w in sorted(config.weights.items()) if w > 0)
        await self.store.run(self.store.add_event, fn.name, self.clock.now(), "traffic",
                             f"{why}: {split}")
        return self.traffic(fn.name)

    def rollout(self, name: str) -> dict[str, Any]:
        """The function's last gradual rollout since the server started."""
        self.function(name)
        return self.rollouts.describe(name)

    def traffic(self, name: str) -> dict[str, Any]:
        fn = self.function(name)
        return {"function": name, "latest": fn.latest, **fn.config.to_json()}

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

    # keys, tenants and quotas (torpor.auth) ---------------------------------------------------------

    async def _load_keys(self) -> None:
        """Read keys and quotas into memory; with auth on and no live admin key (a first start, or
        every admin key revoked), create one: logged once, written to DATA_DIR/admin.key (0600)."""
        records = await self.store.run(self.store.list_keys)
        self.keys.load(records)
        self.quotas = {q.tenant: q for q in await self.store.run(self.store.list_quotas)}
        if self.keys.enabled and not any(r.admin and r.revoked_at is None for r in records):
            record, key = await self.create_key(DEFAULT_TENANT, admin=True)
            path = self.data_dir / ADMIN_KEY_FILENAME
            write_private(path, key + "\n")
            log.warning("created admin API key %s (id %s), shown only this once; it is also in %s "
                        "(mode 0600). Use it as `Authorization: Bearer KEY`, or TORPOR_API_KEY",
                        key, record.id, path)

    async def create_key(self, tenant: str, admin: bool = False) -> tuple[KeyRecord, str]:
        """A new key for ``tenant``: its record (kept hashed) and the key itself (never kept)."""
        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        key_id, key = new_key()
        record = KeyRecord(key_id, tenant, admin, hash_key(key), self.clock.now())
        await self.store.run(self.store.add_key, record)
        self.keys.add(record)
        return record, key

    async def list_keys(self) -> list[KeyRecord]:
        return await self.store.run(self.store.list_keys)

    async def revoke_key(self, key_id: str) -> KeyRecord:
        if not await self.store.run(self.store.revoke_key, key_id, self.clock.now()):
            raise NotFound(f"no key {key_id!r} that is not revoked already (torpor keys ls)")
        self.keys.remove(key_id)
        return next(r for r in await self.list_keys() if r.id == key_id)

    def quota(self, tenant: str) -> Quota:
        return self.quotas.get(tenant) or Quota(tenant)

    async def set_quota(self, tenant: str, values: dict[str, Any]) -> Quota:
        """Change the named limits of ``tenant``'s quota (a None value: no limit)."""
        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        quota = Quota(**{**self.quota(tenant).__dict__, **values})
        await self.store.run(self.store.put_quota, quota, self.clock.now())
        self.quotas[tenant] = quota
        self.reconciler.poke()  # a start waiting on the old quota may go now
        return quota

    def tenants(self, records: list[KeyRecord]) -> list[dict[str, Any]]:
        """Every tenant with a key, a function or a quota: its quota and what it uses now."""
        names = ({r.tenant for r in records} | set(self.owners.values()) | set(self.quotas))
        return [{**self.quota(name).to_api(), "functions": self._owned(name),
                 "instances": self._live_instances(name), "gpus": self._gpus_held(name)}
                for name in sorted(names)]

    def owner(self, name: str) -> str:
        return self.owners.get(name, DEFAULT_TENANT)

    def visible(self, caller: Caller, name: str) -> bool:
        """Does ``caller`` see function ``name`` (it exists and is the caller's, or caller is admin)?"""
        return name in self.functions and caller.owns(self.owner(name))

    def _owned(self, tenant: str) -> int:
        return sum(1 for name in self.functions if self.owner(name) == tenant)

    def _live_instances(self, tenant: str) -> int:
        return sum(len(fn.live()) for name, fn in self.functions.items()
                   if self.owner(name) == tenant)

    def _gpus_held(self, tenant: str, extra: Placement | None = None) -> float:
        ids = {i for name, fn in self.functions.items() if self.owner(name) == tenant
               for i in fn.instances}
        held = {i: p for i, p in self.reconciler.placements.items() if i in ids}
        if extra is not None:
            held["(next)"] = extra
        return gpus_held(self.reconciler.gpu_nodes(), held)

    def _deploy_owner(self, name: str, caller: Caller | None) -> str:
        """Whose the function deployed as ``name`` is; refuses another tenant's name and a new
        function past its tenant's ``max_functions``."""
        if name in self.functions:
            owner = self.owner(name)
            if caller is not None and not caller.owns(owner):
                raise Conflict(f"function name {name!r} is taken by another tenant; "
                               "choose another name")
            return owner
        tenant = caller.tenant if caller is not None else DEFAULT_TENANT
        limit = self.quota(tenant).max_functions
        current = self._owned(tenant)
        if limit is not None and current >= limit:
            raise QuotaExceeded(
                f"quota max_functions of tenant {tenant!r} reached: {current} of {limit} "
                f"functions deployed; delete one or raise it (torpor keys quota {tenant} "
                "--max-functions N)", tenant=tenant, quota="max_functions", current=current,
                limit=limit)
        return tenant

    def _admit(self, fn: FunctionRuntime, rev: RevisionRuntime,
               placement: Placement | None) -> str | None:
        """Why the next instance of ``fn`` waits for its tenant's quota (None: it may start)."""
        tenant = self.owner(fn.name)
        quota = self.quota(tenant)
        if quota.max_instances is not None:
            live = self._live_instances(tenant)
            if live >= quota.max_instances:
                return (f"waiting for tenant {tenant!r}'s quota max_instances: {live} of "
                        f"{quota.max_instances} instances live")
        resources = rev.spec.resources
        if quota.max_gpus is not None and (resources.gpus or resources.gpu_memory_mb):
            held = self._gpus_held(tenant)
            need = (self._gpus_held(tenant, placement) - held if placement is not None
                    else float(resources.gpus))
            if held + need > quota.max_gpus + QUOTA_EPSILON:
                return (f"waiting for tenant {tenant!r}'s quota max_gpus: need {need:g} GPU, "
                        f"{held:g} of {quota.max_gpus:g} held")
        return None

    # the read model ----------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any]:
        """A function as the API shows it."""
        return function_to_api(self.function(name), self.template_info(name))

    def template_info(self, name: str, revision: int | None = None) -> dict[str, Any] | None:
        """What the backend holds for a revision between instances (``None``: the newest it holds
        something for), or when it was retired for being idle."""
        info = self.backend.function_info(name, revision)
        if info is not None:
            return info
        retired = [at for (function, number), at in self.reconciler.retired_templates.items()
                   if function == name and revision in (None, number)]
        if not retired:
            return None
        return {"state": "retired", "retired_at": max(retired),
                "reason": f"no instance and no request for "
                          f"{self.reconciler.template_retire_idle_s:g}s; "
                          "the next cold start rebuilds it"}

    def template_memory(self) -> dict[str, int]:
        """Bytes held by each function's templates (and their spares), for /metrics: one per
        revision that holds one."""
        held = {}
        for name, fn in self.functions.items():
            sizes = [info["memory_bytes"] for info in
                     (self.backend.function_info(name, number) for number in fn.revisions)
                     if info is not None and isinstance(info.get("memory_bytes"), int)]
            if sizes:
                held[name] = sum(sizes)
        return held

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "functions": len(self.functions), **self.backend.health()}

    def nodes(self) -> list[dict[str, Any]]:
        by_node: dict[str, list[str]] = {}
        for fn in self.functions.values():
            for instance in fn.live():
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
        self.owners.pop(name, None)

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
                   function: str | None, caller: Caller | None = None) -> dict[str, Any]:
        """Per-function seconds per state, cost, and an always-on GPU's cost over [since, until);
        ``caller``: only the functions a tenant's key sees (default: all)."""
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
        if caller is not None and not caller.admin:
            intervals = [i for i in intervals if caller.owns(self.owner(i.function))]
            lifetimes = {name: span for name, span in lifetimes.items()
                         if caller.owns(self.owner(name))}
        result = billing.bill(intervals, self.prices, since, until, function, lifetimes).to_json()
        result["pools"] = [
            {"pool": pool, "active_seconds": part["active_seconds"],
             "idle_seconds": part["idle_seconds"], "cost": part["cost"]}
            for pool in sorted({i.pool for i in intervals})
            for part in [_totals(billing.bill([i for i in intervals if i.pool == pool], self.prices,
                                              since, until, function, lifetimes).to_json())]
        ]
        result["revisions"] = [
            {"function": name, "revision": int(revision), "active_seconds": part["active_seconds"],
             "idle_seconds": part["idle_seconds"], "cost": part["cost"]}
            for name, revision in sorted({(i.function, i.revision) for i in intervals},
                                         key=lambda key: (key[0], int(key[1])))
            for part in [_totals(billing.bill(
                [i for i in intervals if (i.function, i.revision) == (name, revision)],
                self.prices, since, until, function, lifetimes).to_json())]
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
    live = fn.live()
    # which policy runs and why: auto picks by the measured cold start (keepalive.resolve)
    policy, policy_why = resolve_policy(fn.spec.scaling.policy, fn.current.cold_start_s)
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
        "scaling_policy": policy,
        "scaling_policy_why": policy_why,
        "cold_start_s": fn.current.cold_start_s,
        "waiting": fn.waiting,
        "source": fn.source,
        "code_digest": fn.code.digest,
        "created_at": fn.created_at,
        "updated_at": fn.updated_at,
        "template": template,
        "model_digest": fn.model.digest if fn.model else None,
        "traffic": fn.config.to_json(),
        "spec": fn.spec.model_dump(mode="json"),
    }


def _totals(bill_json: dict[str, Any]) -> dict[str, Any]:
    """A bill's seconds and cost summed over its functions (decimal strings, as in the bill)."""
    from decimal import Decimal

    lines = bill_json["functions"]
    return {key: str(sum((Decimal(line[key]) for line in lines), Decimal(0)))
            for key in ("active_seconds", "idle_seconds")} | {"cost": bill_json["cost"]}


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
