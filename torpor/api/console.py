"""The web console at ``/ui`` and the JSON it reads under ``/api/v1/console/``, plus function logs.

The page (``torpor/api/ui``: uPlot for charts and Pico CSS, vendored at pinned versions, and one
small script) polls three endpoints every two seconds:

- ``overview``: each function's status, instances by state, requests/s and p50/p99 over the last
  minute, cold starts in the last hour, cost today (UTC) and what always-on hardware would have cost;
- ``functions/{name}``: instances with state, node, placement and cold-start breakdown; a timeline of
  instance states over the window (from the ledger); request rate, latency, queue and desired vs
  ready over time (from the sampler's history); the autoscaler's reason; recent events;
- ``billing``: active vs idle seconds and cost per function and per pool, with the always-on line.

It reads the platform's in-memory state and the store, never the reconciler's insides beyond the
function runtimes :meth:`torpor.platform.Platform.describe` already describes.
"""

from __future__ import annotations

import dataclasses
import socket
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from torpor.api import logs
from torpor.api.access import caller_of
from torpor.api.app import parse_time
from torpor.api.sampler import Sampler
from torpor.auth import Caller
from torpor.errors import BadRequest, NotFound
from torpor.lifecycle.instance import FunctionRuntime
from torpor.metering import billing, ledger
from torpor.metering.billing import LedgerInterval
from torpor.store import history

if TYPE_CHECKING:
    from torpor.platform import Platform

UI_DIR = Path(__file__).parent / "ui"
HOUR_S = 3600.0
MAX_WINDOW_S = 86400.0
DEFAULT_TAIL_LINES = 100


def start_of_day(now: float) -> float:
    """Midnight UTC of the day ``now`` falls in."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Console:
    def __init__(self, platform: Platform, sampler: Sampler) -> None:
        self.platform = platform
        self.sampler = sampler
        self.node = socket.gethostname()

    async def overview(self, caller: Caller | None = None) -> dict[str, Any]:
        """``caller``: only the functions a tenant's key sees (default: all)."""
        platform = self.platform
        now = platform.clock.now()
        store = platform.store
        cold = await store.run(history.cold_starts, store, now - HOUR_S)
        bill = await self._bill(start_of_day(now), now, caller=caller)
        lines = {line["function"]: line for line in bill["functions"]}
        functions = []
        for name, fn in sorted(platform.functions.items()):
            if caller is not None and not platform.visible(caller, name):
                continue
            recent = self.sampler.recent(name, now)
            data = platform.describe(name)
            line = lines.get(name, {})
            functions.append({
                "name": name, "revision": fn.revision, "kind": fn.spec.kind,
                "status": data["status"], "instance_states": data["instance_states"],
                "instances": data["instances"], "in_flight": fn.route.in_flight,
                "queued": fn.route.queued, "desired": fn.decision.desired,
                "rps": recent.rps, "p50_ms": _ms(recent.p50_s), "p99_ms": _ms(recent.p99_s),
                "cold_starts_1h": cold.get(name, 0),
                "cost_today": line.get("cost", "0"), "always_on_today": line.get("always_on_cost", "0"),
            })
        return {"now": now, "node": self.node, "currency": bill["currency"], "functions": functions,
                "cost_today": bill["cost"], "always_on_today": bill["always_on_cost"]}

    async def function(self, name: str, window_s: float) -> dict[str, Any]:
        if not 0 < window_s <= MAX_WINDOW_S:
            raise BadRequest(f"window_s must be in (0, {MAX_WINDOW_S:g}], not {window_s:g}")
        platform = self.platform
        fn = platform.function(name)
        now = platform.clock.now()
        since = now - window_s
        store = platform.store
        rows = await store.run(store.ledger_rows, since, now, name)
        series = await store.run(history.samples, store, name, since)
        recent = self.sampler.recent(name, now)
        return {
            "now": now, "since": since, "window_s": window_s,
            "function": {**platform.describe(name),
                         "rps": recent.rps, "p50_ms": _ms(recent.p50_s), "p99_ms": _ms(recent.p99_s)},
            "autoscaler": self._autoscaler(fn),
            "instances": [self._instance(fn, i) for i in fn.instances.values()],
            "timeline": [{"instance": row["instance_id"], "state": row["state"],
                          "start": max(row["start"], since), "end": row["end"]} for row in rows],
            "series": [sample.to_json() for sample in series],
            "events": await platform.events(name),
        }

    def _autoscaler(self, fn: FunctionRuntime) -> dict[str, Any]:
        live = fn.live()
        return {"desired": fn.decision.desired, "provisioned": fn.decision.provisioned,
                "ready": sum(1 for i in live if i.state.value in ("ready", "busy")),
                "panic": fn.decision.panic, "reason": fn.decision.reason,
                "min_instances": fn.spec.scaling.min_instances,
                "max_instances": fn.spec.scaling.max_instances}

    def _instance(self, fn: FunctionRuntime, instance: Any) -> dict[str, Any]:
        resources = fn.spec.resources
        on_gpu = resources.gpus > 0 or resources.gpu_memory_mb > 0
        return {
            "id": instance.id, "revision": instance.revision, "state": instance.state.value,
            "idle": instance.idle_transition(), "provisioned": instance.provisioned,
            "in_flight": instance.in_flight, "node": instance.node or self.node,
            "pool": instance.pool or "local",
            "placement": {"device": "gpu" if on_gpu else "cpu", "gpus": resources.gpus,
                          "gpu_memory_mb": resources.gpu_memory_mb, "cpus": resources.cpus,
                          "memory_mb": resources.memory_mb},
            "started_at": instance.facts.started_at, "ready_at": instance.facts.ready_at,
            "cold_start": instance.cold_start(),
        }

    async def billing(self, since: float | None, until: float | None,
                      caller: Caller | None = None) -> dict[str, Any]:
        now = self.platform.clock.now()
        until = now if until is None else until
        since = start_of_day(now) if since is None else since
        if since >= until:
            raise BadRequest(f"since ({since}) must be before until ({until})")
        return await self._bill(since, until, by_pool=True, caller=caller)

    async def _bill(self, since: float, until: float, by_pool: bool = False,
                    caller: Caller | None = None) -> dict[str, Any]:
        """Per function (and pool): cost in ``[since, until)`` against always-on hardware kept from
        the function's first record in that window (as ``torpor bill`` without ``--since``), so a
        function deployed at noon is not compared with a GPU kept on since midnight."""
        store = self.platform.store
        intervals = ledger.intervals(await store.run(store.ledger_rows, since, until))
        if caller is not None and not caller.admin:
            intervals = [i for i in intervals if caller.owns(self.platform.owner(i.function))]
        functions = self._lines(intervals, since, until)
        cost = sum((Decimal(line["cost"]) for line in functions), Decimal(0))
        always_on = sum((Decimal(line["always_on_cost"]) for line in functions), Decimal(0))
        result: dict[str, Any] = {
            "since_epoch_s": since, "until_epoch_s": until, "currency": self.platform.prices.currency,
            "functions": functions, "cost": _text(cost), "always_on_cost": _text(always_on),
            "saving_pct": _text(((always_on - cost) * 100 / always_on).quantize(Decimal("0.01")))
            if always_on else None,
        }
        if by_pool:  # the same arithmetic with the pool in the function's place
            pooled = [dataclasses.replace(i, function=i.pool) for i in intervals]
            result["pools"] = [{**line, "pool": line.pop("function")}
                               for line in self._lines(pooled, since, until)]
        return result

    def _lines(self, intervals: list[LedgerInterval], since: float,
               until: float) -> list[dict[str, Any]]:
        groups: dict[str, list[LedgerInterval]] = {}
        for interval in intervals:
            groups.setdefault(interval.function, []).append(interval)
        lines = []
        for _, group in sorted(groups.items()):
            first = max(since, min(i.start for i in group))
            if first < until:
                lines.extend(billing.bill(group, self.platform.prices, first, until).to_json()["functions"])
        return lines

    def log_stream(self, name: str, instance: str | None, since: float | None, tail: int,
                   follow: bool) -> StreamingResponse:
        folder = logs.log_dir(self.platform.data_dir, name)
        if name not in self.platform.functions and not folder.is_dir():
            raise NotFound(f"function {name!r} not found")
        if instance is not None and not logs.log_files(folder, instance):
            known = name in self.platform.functions and instance in self.platform.functions[name].instances
            if not (known or follow):
                raise NotFound(f"no logs for instance {instance!r} of function {name!r}")
        offsets: dict[Path, int] = {}
        first = list(logs.snapshot(folder, instance, since, tail, offsets))

        async def body() -> Any:
            for chunk in first:
                yield chunk
            if follow:
                async for chunk in logs.follow(folder, instance, offsets):
                    yield chunk

        return StreamingResponse(body(), media_type="application/x-ndjson")


def install(app: FastAPI, platform: Platform, sampler: Sampler) -> Console:
    """Add the console's page and JSON routes, and the logs route, to the control API."""
    console = Console(platform, sampler)
    router = APIRouter(tags=["console"])

    @router.get("/api/v1/console/overview")
    async def overview(request: Request) -> dict[str, Any]:
        return await console.overview(caller_of(request))

    @router.get("/api/v1/console/functions/{name}")
    async def function_page(name: str, window_s: float = HOUR_S) -> dict[str, Any]:
        return await console.function(name, window_s)

    @router.get("/api/v1/console/billing")
    async def billing_page(request: Request, since: str | None = None,
                           until: str | None = None) -> dict[str, Any]:
        return await console.billing(parse_time(since, "since"), parse_time(until, "until"),
                                     caller_of(request))

    @router.get("/api/v1/functions/{name}/logs", tags=["logs"], response_class=StreamingResponse)
    async def function_logs(name: str, instance: str | None = None, since: str | None = None,
                            tail: int = DEFAULT_TAIL_LINES, follow: bool = False) -> StreamingResponse:
        """NDJSON ``{"source", "stream", "line"}``: the last ``tail`` lines per instance or template
        log, then with ``follow`` every new line until the client disconnects."""
        if tail < 0:
            raise BadRequest(f"tail must be 0 or more, not {tail}")
        return console.log_stream(name, instance, parse_time(since, "since"), tail, follow)

    @router.get("/ui", include_in_schema=False)
    async def ui_redirect() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @router.get("/ui/", include_in_schema=False)
    async def ui_index() -> FileResponse:
        return FileResponse(UI_DIR / "index.html", headers={"cache-control": "no-cache"})

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=UI_DIR), name="ui")
    return console
