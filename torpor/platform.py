"""The platform: store, reconciler and clock put together, with deploy/delete semantics.

Deploy validates the whole spec before anything is written, so a bad spec never half-deploys; the
spec is stored, then installed in the reconciler, which replaces old instances without dropping
in-flight requests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from torpor.autoscaling.scaling_policies import (
    ProvisionConfig,
    parse_provision_config,
    to_fc_json,
)
from torpor.backend.forked import enable_subreaper, forking_supported
from torpor.backend.freezer import make_freezer
from torpor.backend.local import LocalBackend
from torpor.cache import CachedModel, ModelCache
from torpor.clock import Clock, SystemClock
from torpor.errors import BadRequest, NotFound, SpecError
from torpor.lifecycle.deploy_check import handler_problem
from torpor.lifecycle.instance import FunctionRuntime, Instance
from torpor.lifecycle.reconciler import Reconciler
from torpor.lifecycle.template_idle import load_template_settings, process_memory_bytes
from torpor.metering import billing, ledger
from torpor.metering.prices import load_prices
from torpor.spec import FunctionSpec, parse_spec, resolve_model_path
from torpor.store import Store

log = logging.getLogger(__name__)

DB_FILENAME = "torpor.db"
CONFIG_FILENAME = "config.yaml"  # the server config (price table) when --config is not given
MAX_BILL_AHEAD_S = 366 * 86_400.0  # a bill's window may not end later than this after now


class Platform:
    def __init__(self, data_dir: Path, clock: Clock | None = None,
                 config_path: Path | None = None) -> None:
        self.data_dir = data_dir
        if config_path is None and (data_dir / CONFIG_FILENAME).is_file():
            config_path = data_dir / CONFIG_FILENAME
        self.prices = load_prices(config_path)  # a bad config stops the server before it starts
        self.clock = clock or SystemClock()
        self.store = Store(data_dir / DB_FILENAME)
        self.cache = ModelCache.in_data_dir(data_dir)
        self.freezer = make_freezer(data_dir)
        self.reconciler = Reconciler(self.store, self.clock, data_dir, LocalBackend(),
                                     templates=forking_supported() and enable_subreaper(),
                                     freezer=self.freezer)
        from torpor.api.metrics import Metrics

        self.metrics = Metrics(self)
        self.reconciler.template_retire_idle_s = load_template_settings(config_path).retire_idle_s
        self.reconciler.on_ready = self._observe_cold_start

    @property
    def functions(self) -> dict[str, FunctionRuntime]:
        return self.reconciler.functions

    def _observe_cold_start(self, instance: Instance) -> None:
        for phase, seconds in instance.cold_start().items():
            if isinstance(seconds, float):
                self.metrics.cold_start.labels(instance.function, phase.removesuffix("_s")).observe(
                    seconds
                )

    def start_guard(self) -> None:
        """A process of its own that stops whatever this server leaves if it is killed (SIGKILL)."""
        if sys.platform != "linux" or not hasattr(os, "pidfd_open"):
            return
        args = [sys.executable, "-m", "torpor.lifecycle.guard", "--server-pid", str(os.getpid())]
        if self.freezer.base is not None:
            args += ["--cgroup-base", str(self.freezer.base)]
        log_path = self.data_dir / "logs" / "guard.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                             start_new_session=True)

    async def startup(self) -> None:
        """Close what a previous server left open, restore deployed functions, start reconciling."""
        self.start_guard()
        # What a crashed server left open ends at its last heartbeat: the last moment it was
        # known to be alive (a clean stop closes everything itself).
        last_alive = await self.store.run(self.store.last_heartbeat) or self.clock.now()
        closed = await self.store.run(self.store.close_open_instances, last_alive)
        intervals = await self.store.run(self.store.close_open_intervals, last_alive)
        if closed or intervals:
            log.info("closed %d instance records and %d ledger intervals left open by a previous "
                     "server at its last heartbeat", closed, intervals)
        for record in await self.store.run(self.store.list_functions):
            try:
                spec = parse_spec(record.spec, source=record.source, base_dir=Path(record.base_dir),
                                  check_model_path=False)
            except SpecError as exc:
                log.error("cannot restore function %s: %s", record.name, exc)
                continue
            model_path = None
            if record.model_digest is not None:
                cached = self.cache.get(record.model_digest)
                if cached is None:
                    log.error("cannot restore function %s: its model %s is no longer in the cache",
                              record.name, record.model_digest)
                    continue
                model_path = cached.path
            self.reconciler.apply(spec, record.revision, Path(record.base_dir), record.source,
                                  record.created_at, record.updated_at,
                                  await self._stored_provision(record.name), model_path)
        self.reconciler.start()

    async def _stored_provision(self, name: str) -> ProvisionConfig | None:
        data = await self.store.run(self.store.get_provision, name)
        return ProvisionConfig.model_validate(data) if data is not None else None

    async def shutdown(self) -> None:
        await self.reconciler.shutdown()
        self.freezer.close()
        self.store.close()

    async def deploy(self, raw: dict[str, Any], base_dir: Path, source: str) -> FunctionRuntime:
        spec = parse_spec(raw, source=source, base_dir=base_dir)
        problem = await handler_problem(spec, base_dir)
        if problem is not None:
            raise SpecError(source, [problem])
        cached = await self._cache_model(spec, base_dir, source)
        record = await self.store.run(
            self.store.put_function, spec.name, raw, str(base_dir), source, self.clock.now(),
            cached.digest if cached else None,
        )
        fn = self.reconciler.apply(spec, record.revision, base_dir, source, record.created_at,
                                   record.updated_at, await self._stored_provision(spec.name),
                                   cached.path if cached else None)
        if cached is not None:
            verb = "already cached" if cached.hit else "cached"
            await self.store.run(self.store.add_event, spec.name, self.clock.now(), "model",
                                 f"model.path {verb} as {cached.digest[:12]} "
                                 f"({cached.size_bytes} bytes, {cached.files} files)")
        await self.store.run(self.store.add_event, spec.name, self.clock.now(), "deployed",
                             f"revision {record.revision} deployed from {source}")
        return fn

    def template_info(self, name: str) -> dict[str, Any] | None:
        templates = self.reconciler.templates
        template = templates.by_function.get(name) if templates is not None else None
        if template is not None:
            info = template.to_api()
            if template.handle is not None and template.alive:
                info["memory_bytes"] = process_memory_bytes(template.handle.pid)
            return info
        retired_at = self.reconciler.retired_templates.get(name)
        if retired_at is not None:
            return {"state": "retired", "retired_at": retired_at,
                    "reason": f"no instance and no request for "
                              f"{self.reconciler.template_retire_idle_s:g}s; "
                              "the next cold start rebuilds it"}
        return None

    async def _cache_model(self, spec: FunctionSpec, base_dir: Path,
                           source: str) -> CachedModel | None:
        """Copy model.path into the content-addressed cache (a no-op copy when already there)."""
        model_path = resolve_model_path(spec, base_dir)
        if model_path is None:
            return None
        try:
            return await asyncio.to_thread(self.cache.put, model_path, True)
        except SpecError as exc:
            raise SpecError(source, exc.errors) from None

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
        return billing.bill(ledger.intervals(rows), self.prices, since, until, function,
                            lifetimes).to_json()

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
