"""Control API: deploy, list, get, delete functions; list instances; health.

Every error is JSON ``{"error": "<one sentence>"}`` so the CLI can print it as is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from torpor import __version__
from torpor.errors import BadRequest, NotFound, SpecError
from torpor.lifecycle.instance import FunctionRuntime
from torpor.platform import Platform


class DeployRequest(BaseModel):
    """A spec as parsed from torpor.yaml, and the folder its code lives in (on the server)."""

    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any]
    base_dir: str
    source: str = "torpor.yaml"


def parse_time(value: str | None, name: str) -> float | None:
    """Epoch seconds or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is neither epoch seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


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
        "source": fn.source,
        "base_dir": str(fn.base_dir),
        "created_at": fn.created_at,
        "updated_at": fn.updated_at,
        "template": template,
        "model_path": str(fn.model_path) if fn.model_path else None,
        "spec": fn.spec.model_dump(mode="json"),
    }


def create_api(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="torpor control API",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(SpecError)
    async def _bad_spec(_: Request, exc: SpecError) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc), "source": exc.source, "errors": exc.errors}, status_code=422
        )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "functions": len(platform.functions),
                "freezer": platform.freezer.name,
                "templates": platform.reconciler.templates is not None}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(platform.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    def describe(fn: FunctionRuntime) -> dict[str, Any]:
        return function_to_api(fn, platform.template_info(fn.name))

    @app.get("/api/v1/functions", tags=["functions"])
    async def list_functions() -> list[dict[str, Any]]:
        return [describe(fn) for fn in platform.functions.values()]

    @app.post("/api/v1/functions", tags=["functions"], status_code=201)
    async def deploy(body: DeployRequest) -> dict[str, Any]:
        fn = await platform.deploy(body.spec, Path(body.base_dir), body.source)
        return describe(fn)

    @app.get("/api/v1/functions/{name}", tags=["functions"])
    async def get_function(name: str) -> dict[str, Any]:
        fn = platform.function(name)
        data = describe(fn)
        data["instance_list"] = [i.to_api() for i in fn.instances.values()]
        data["events"] = await platform.events(name)
        return data

    @app.delete("/api/v1/functions/{name}", tags=["functions"])
    async def delete_function(name: str) -> dict[str, Any]:
        await platform.delete(name)
        return {"deleted": name}

    @app.get("/api/v1/functions/{name}/provision", tags=["provision"])
    async def get_provision(name: str) -> dict[str, Any]:
        return platform.provision(name)

    @app.put("/api/v1/functions/{name}/provision", tags=["provision"])
    async def put_provision(name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Body: torpor's shape (`target`, `target_tracking`, `scheduled`) or Function Compute's
        provision.json (`target`, `targetTrackingPolicies`, `scheduledActions`)."""
        return await platform.set_provision(name, body)

    @app.get("/api/v1/billing", tags=["billing"])
    async def billing(since: str | None = None, until: str | None = None,
                      function: str | None = None) -> dict[str, Any]:
        """Seconds per state, cost and the always-on comparison per function over [since, until).

        ``since``/``until``: epoch seconds or ISO 8601 (default: everything up to now).
        """
        return await platform.bill(parse_time(since, "since"), parse_time(until, "until"), function)

    @app.get("/api/v1/instances", tags=["instances"])
    async def list_instances(function: str | None = None, all: bool = False) -> list[dict[str, Any]]:
        return await platform.instances(function, include_ended=all)

    return app
