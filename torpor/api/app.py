"""Control API: upload code, deploy, list, get, delete functions; revisions, traffic, tags and
rollback; instances, nodes; API keys and tenants' quotas; health.

Every route but ``/healthz`` needs an API key (:mod:`torpor.api.access`); a tenant's key sees only
its tenant's functions.

Every error is torpor's one JSON shape ``{"error", "reason", "function", "request_id"}``
(:mod:`torpor.api.errors`), so the CLI can print ``error`` as is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from torpor import __version__
from torpor.api.access import RequireKey, authorizer, caller_of
from torpor.api.docs import install_offline_docs
from torpor.api.errors import BodyLimit, error_response, install_error_handlers
from torpor.errors import BadRequest
from torpor.lifecycle.rollout import RolloutConfig
from torpor.platform import Platform

MAX_QUOTA = 1_000_000  # a tenant's limits stay well inside the store's integers
MAX_CODE_UPLOAD_BYTES = 512 * 1024 * 1024  # torpor.code.DEFAULT_MAX_BYTES: what the CLI packs at most


class PayloadTooLarge(BadRequest):
    """A body over its limit (413)."""


class RolloutRequest(BaseModel):
    """A gradual rollout: the new revision's percent at each step (the last 100), ``every_s``
    between steps, and the automatic rollback's margin over the old revision's error rate."""

    model_config = ConfigDict(extra="forbid")
    steps: list[int]
    every_s: float
    max_error_margin: float = 0.05
    min_requests: int = 10


class DeployRequest(BaseModel):
    """A spec as parsed from torpor.yaml, and the digests of its uploaded code (``PUT
    /api/v1/code/{digest}`` first). ``model``: model.path's folder when it was uploaded apart."""

    model_config = ConfigDict(extra="forbid")
    spec: dict[str, Any]
    code: str
    model: str | None = None
    source: str = "torpor.yaml"
    traffic: int | None = None  # the new revision's percent of the traffic (default 100)
    created_by: str | None = None  # who deploys, as the client says (recorded with the revision)
    rollout: RolloutRequest | None = None


class TrafficRequest(BaseModel):
    """Weights per revision in whole percents summing to 100: ``{"weights": {"3": 90, "4": 10}}``."""

    model_config = ConfigDict(extra="forbid")
    weights: dict[str, Any]


class TagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revision: int


class RollbackRequest(BaseModel):
    """``revision``: where all traffic goes (default: the one before the newest taking traffic)."""

    model_config = ConfigDict(extra="forbid")
    revision: int | None = None


class KeyRequest(BaseModel):
    """A new API key for ``tenant``; ``admin``: it sees and changes every tenant's functions."""

    model_config = ConfigDict(extra="forbid")
    tenant: str
    admin: bool = False


class QuotaRequest(BaseModel):
    """The limits to change (a field left out stays as it is; null: no limit)."""

    model_config = ConfigDict(extra="forbid")
    max_functions: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    max_instances: int | None = Field(default=None, ge=0, le=MAX_QUOTA)
    max_gpus: float | None = Field(default=None, ge=0, le=MAX_QUOTA, allow_inf_nan=False)


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


def create_api(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="torpor control API",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served offline by install_offline_docs
        redoc_url=None,
    )
    install_offline_docs(app, "/api/v1/openapi.json")
    # every route added from here on (the console's included) checks the caller's key first
    app.router.dependencies.append(Depends(authorizer(platform)))

    install_error_handlers(app)
    # code uploads have their own, larger limit (MAX_CODE_UPLOAD_BYTES, checked by put_code)
    app.add_middleware(BodyLimit, max_body_bytes=platform.config.http.api_max_body_bytes,
                       exempt_prefixes=("/api/v1/code/",))
    app.add_middleware(RequireKey, platform=platform)  # outermost: no key, no body read

    @app.exception_handler(PayloadTooLarge)
    async def _too_large(request: Request, exc: PayloadTooLarge) -> JSONResponse:
        return error_response(request, 413, str(exc), "body_too_large")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {**platform.health(), "version": __version__}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(platform.metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/v1/functions", tags=["functions"])
    async def list_functions(request: Request) -> list[dict[str, Any]]:
        caller = caller_of(request)
        return [platform.describe(name) for name in platform.functions
                if platform.visible(caller, name)]

    @app.head("/api/v1/code/{digest}", tags=["functions"])
    async def has_code(digest: str) -> Response:
        """200 when code with this sha256 is already uploaded (then the CLI skips the upload)."""
        return Response(status_code=200 if platform.code.has(digest) else 404)

    @app.put("/api/v1/code/{digest}", tags=["functions"], status_code=201)
    async def put_code(digest: str, request: Request) -> dict[str, Any]:
        """Upload a function's folder as a ``.tar.gz`` whose sha256 is ``digest`` (``torpor deploy``
        packs it); at most ``MAX_CODE_UPLOAD_BYTES``."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_CODE_UPLOAD_BYTES:
            raise PayloadTooLarge(f"code archive of {declared} bytes is larger than the limit of "
                                  f"{MAX_CODE_UPLOAD_BYTES} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_CODE_UPLOAD_BYTES:
                raise PayloadTooLarge(f"code archive is larger than the limit of "
                                      f"{MAX_CODE_UPLOAD_BYTES} bytes")
            chunks.append(chunk)
        ref = await platform.put_code(b"".join(chunks), digest)
        return {"digest": ref.digest, "bytes": size}

    @app.post("/api/v1/functions", tags=["functions"], status_code=201)
    async def deploy(body: DeployRequest, request: Request) -> dict[str, Any]:
        code = platform.code_ref(body.code, "code")
        model = platform.code_ref(body.model, "model") if body.model is not None else None
        rollout = None
        if body.rollout is not None:
            r = body.rollout
            rollout = RolloutConfig.parse(r.steps, r.every_s, r.max_error_margin, r.min_requests)
        caller = caller_of(request)
        created_by = body.created_by
        if caller.key_id is not None:  # the key that deployed it, with what the client says
            created_by = f"{caller.tenant}/{caller.key_id}" + (f" ({created_by})" if created_by else "")
        fn = await platform.deploy(body.spec, code, body.source, model, body.traffic,
                                   created_by, rollout, caller)
        return platform.describe(fn.name)

    @app.get("/api/v1/functions/{name}/revisions", tags=["revisions"])
    async def list_revisions(name: str) -> list[dict[str, Any]]:
        """Every deploy of the function, oldest first, with its traffic share, tags and instances."""
        return await platform.revisions(name)

    @app.get("/api/v1/functions/{name}/traffic", tags=["revisions"])
    async def get_traffic(name: str) -> dict[str, Any]:
        return platform.traffic(name)

    @app.put("/api/v1/functions/{name}/traffic", tags=["revisions"])
    async def put_traffic(name: str, body: TrafficRequest) -> dict[str, Any]:
        """Split the traffic between revisions by weight; tags are kept."""
        return await platform.set_traffic(name, body.weights)

    @app.get("/api/v1/functions/{name}/rollout", tags=["revisions"])
    async def get_rollout(name: str) -> dict[str, Any]:
        """The function's last gradual rollout: its steps, status and timeline."""
        return platform.rollout(name)

    @app.put("/api/v1/functions/{name}/tags/{tag}", tags=["revisions"])
    async def put_tag(name: str, tag: str, body: TagRequest) -> dict[str, Any]:
        """``/fn/NAME@TAG/...`` reaches only ``revision``."""
        return await platform.tag(name, body.revision, tag)

    @app.delete("/api/v1/functions/{name}/tags/{tag}", tags=["revisions"])
    async def delete_tag(name: str, tag: str) -> dict[str, Any]:
        return await platform.tag(name, None, tag)

    @app.post("/api/v1/functions/{name}/rollback", tags=["revisions"])
    async def rollback(name: str, body: RollbackRequest | None = None) -> dict[str, Any]:
        """All traffic to one revision in one step; requests in flight finish where they started."""
        return await platform.rollback(name, body.revision if body is not None else None)

    @app.get("/api/v1/nodes", tags=["nodes"])
    async def list_nodes() -> list[dict[str, Any]]:
        """The machines instances run on: pool, resources, and the live instances on each."""
        return platform.nodes()

    @app.get("/api/v1/functions/{name}", tags=["functions"])
    async def get_function(name: str) -> dict[str, Any]:
        fn = platform.function(name)
        data = platform.describe(name)
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
    async def billing(request: Request, since: str | None = None, until: str | None = None,
                      function: str | None = None) -> dict[str, Any]:
        """Seconds per state, cost and the always-on comparison per function over [since, until).

        ``since``/``until``: epoch seconds or ISO 8601 (default: everything up to now).
        """
        return await platform.bill(parse_time(since, "since"), parse_time(until, "until"), function,
                                   caller_of(request))

    @app.get("/api/v1/instances", tags=["instances"])
    async def list_instances(request: Request, function: str | None = None,
                             all: bool = False) -> list[dict[str, Any]]:
        caller = caller_of(request)
        rows = await platform.instances(function, include_ended=all)
        return rows if caller.admin else [
            row for row in rows if platform.visible(caller, row["function"])]

    @app.get("/api/v1/keys", tags=["keys"])
    async def list_keys() -> list[dict[str, Any]]:
        """Every API key (admin only): id, tenant, admin, created, revoked; never the key."""
        return [record.to_api() for record in await platform.list_keys()]

    @app.post("/api/v1/keys", tags=["keys"], status_code=201)
    async def create_key(body: KeyRequest) -> dict[str, Any]:
        """A new key (admin only); ``key`` is in this answer only: torpor keeps its hash."""
        record, key = await platform.create_key(body.tenant, body.admin)
        return {**record.to_api(), "key": key}

    @app.delete("/api/v1/keys/{key_id}", tags=["keys"])
    async def revoke_key(key_id: str) -> dict[str, Any]:
        """Revoke a key (admin only): it is refused from now on."""
        return (await platform.revoke_key(key_id)).to_api()

    @app.get("/api/v1/tenants", tags=["keys"])
    async def list_tenants() -> list[dict[str, Any]]:
        """Each tenant's quota and what it holds now (admin only)."""
        return platform.tenants(await platform.list_keys())

    @app.put("/api/v1/tenants/{tenant}/quota", tags=["keys"])
    async def put_quota(tenant: str, body: QuotaRequest) -> dict[str, Any]:
        """Set a tenant's ``max_functions``, ``max_instances`` and ``max_gpus`` (admin only)."""
        values = {field: getattr(body, field) for field in body.model_fields_set}
        return (await platform.set_quota(tenant, values)).to_api()

    return app
