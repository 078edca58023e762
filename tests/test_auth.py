"""API keys, tenants and quotas (issue 12) against a real ``torpor serve``.

The auth matrix: every route of the control API (enumerated from the FastAPI app, so a new route
cannot be left out) and every way into a function (``/fn``, OpenAI's ``/v1``, the Open Inference
Protocol's ``/v2``) is called with no key, a bad key, a revoked key, tenant B's key on tenant A's
function, tenant A's own key and the admin key.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.conftest import ROOT, TorporServer, free_port, make_function, torpor_cli
from torpor.code import pack_dir
from torpor.spec import load_spec_file

BAD = "tp_000000000000_" + "x" * 43
MISSING = "zz-missing"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def deploy_as(srv: TorporServer, key: str, folder: Path) -> httpx.Response:
    """Upload and deploy a folder with ``key``, as ``torpor deploy`` does."""
    _, raw, base_dir = load_spec_file(folder)
    archive = pack_dir(base_dir)
    upload = srv.http.put(f"/api/v1/code/{archive.digest}", content=archive.data,
                          headers=bearer(key))
    assert upload.status_code == 201, upload.text
    return srv.http.post("/api/v1/functions", json={"spec": raw, "code": archive.digest,
                                                    "source": str(folder)}, headers=bearer(key))


def new_key(srv: TorporServer, tenant: str, admin: bool = False) -> dict[str, Any]:
    response = srv.http.post("/api/v1/keys", json={"tenant": tenant, "admin": admin})
    assert response.status_code == 201, response.text
    return dict(response.json())


def control_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, path) of every route of the control app, the console's included."""
    from torpor.api import console
    from torpor.api.app import create_api
    from torpor.api.sampler import Sampler
    from torpor.platform import Platform

    (tmp_path / "routes").mkdir()
    platform = Platform(tmp_path / "routes")
    try:
        app = create_api(platform)
        console.install(app, platform, Sampler(platform, platform.metrics.requests))
        found: set[tuple[str, str]] = set()

        def walk(routes: list[Any]) -> None:
            for route in routes:
                if isinstance(route, APIRoute):
                    found.update((method, route.path) for method in route.methods)
                elif getattr(route, "original_router", None) is not None:
                    walk(route.original_router.routes)  # an included router (no prefix here)

        walk(app.routes)
        schema = {(method.upper(), path) for path, item in app.openapi()["paths"].items()
                  for method in item}
        assert schema <= found, schema - found  # nothing the schema has is left out
        return sorted(found)
    finally:
        platform.store.close()


class World:
    """One server: tenant A's key function (also an OpenAI model), tenant B's, a public one."""

    def __init__(self, srv: TorporServer, tmp_path: Path) -> None:
        self.srv = srv
        self.a = new_key(srv, "team-a")["key"]
        self.b = new_key(srv, "team-b")["key"]
        revoked = new_key(srv, "team-a")
        self.revoked = revoked["key"]
        assert srv.http.delete(f"/api/v1/keys/{revoked['id']}").status_code == 200
        self.admin = srv.api_key
        self.keys = {"a": self.a, "b": self.b, "revoked": self.revoked, "admin": self.admin}
        echo = make_function(tmp_path, "echo", name="a-fn", openai={"models": ["a-model"]})
        assert deploy_as(srv, self.a, echo).status_code == 201
        for name in ("a-doomed-1", "a-doomed-2"):
            assert deploy_as(srv, self.a, make_function(tmp_path, "echo", name=name)).status_code == 201
        assert deploy_as(srv, self.b, make_function(tmp_path, "echo", name="b-fn")).status_code == 201
        public = make_function(tmp_path, "echo", name="pub", auth="public")
        assert deploy_as(srv, self.admin, public).status_code == 201
        assert srv.invoke("a-fn", {"warm": 1}).status_code == 200  # an instance and a bill line
        assert srv.http.put("/api/v1/functions/a-fn/tags/canary",
                            json={"revision": 1}).status_code == 200


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp_path = tmp_path_factory.mktemp("auth")
    srv = TorporServer(tmp_path / "data")
    try:
        yield World(srv, tmp_path)
    finally:
        if srv.process.poll() is None:
            srv.stop(signal.SIGTERM, timeout_s=20)


def call(world: World, method: str, path: str, key: str | None) -> httpx.Response:
    """One request with ``key`` (None: no Authorization header); POST and PUT send ``{}``."""
    body = {"json": {}} if method in ("POST", "PUT") else {}
    return httpx.request(method, world.srv.url + path, headers=bearer(key) if key else {},
                         timeout=30, **body)


def fill(path: str, name: str) -> str:
    digest = hashlib.sha256(b"nothing").hexdigest()
    return (path.replace("{name}", name).replace("{tag}", "canary").replace("{digest}", digest)
            .replace("{key_id}", "000000000000").replace("{tenant}", "team-a"))


# no key asked: health, the docs page (it reads only the schema), the console's page (it asks for a
# key itself); nothing else
OPEN = {"/healthz", "/api/v1/docs", "/ui", "/ui/"}
ADMIN_ONLY = ("/api/v1/nodes", "/api/v1/keys", "/api/v1/tenants", "/metrics")


def without_request_id(response: httpx.Response) -> tuple[int, Any]:
    body = response.json()
    body.pop("request_id", None)
    return response.status_code, body


def test_auth_matrix_on_every_control_route(world: World, tmp_path: Path) -> None:
    """No key, a bad one, a revoked one: 401 in torpor's shape; tenant B on tenant A's function:
    the very answer a function that does not exist gets; admin-only routes: 403 for a tenant;
    tenant A on its own function and admin: past the check."""
    routes = control_routes(tmp_path)
    assert {("GET", "/api/v1/functions/{name}"), ("GET", "/metrics"),
            ("GET", "/api/v1/console/overview"), ("GET", "/api/v1/functions/{name}/logs"),
            ("GET", "/ui/")} <= set(routes)
    # destructive routes last, so that the function they act on is still there for the others
    routes.sort(key=lambda r: r == ("DELETE", "/api/v1/functions/{name}"))
    table: list[tuple[str, str, str, int]] = []
    for method, template in routes:
        path = fill(template, "a-fn")
        if template in OPEN:
            for key in (None, BAD, world.revoked, world.b):
                assert call(world, method, path, key).status_code in (200, 307), (method, path)
            table.append((method, template, "anyone", 200))
            continue
        for who, key in (("none", None), ("bad", BAD), ("revoked", world.revoked)):
            response = call(world, method, path, key)
            assert response.status_code == 401, (method, path, who, response.text)
            assert response.headers["www-authenticate"] == 'Bearer realm="torpor"'
            table.append((method, template, who, response.status_code))
            if method == "HEAD":
                continue  # no body
            body = response.json()
            assert body["reason"] == "unauthorized"
            assert body["error"] == (
                "the API key is not valid: it is unknown or was revoked" if key else
                "this API needs an API key: send `Authorization: Bearer KEY` (the CLI sends "
                "--api-key, TORPOR_API_KEY or the server's DATA_DIR/admin.key; torpor keys "
                "create makes one)")
        b_answer = call(world, method, path, world.b)
        if template.startswith(ADMIN_ONLY):
            assert b_answer.status_code == 403, (method, path, b_answer.text)
            assert b_answer.json()["reason"] == "forbidden"
        elif "{name}" in template:
            missing = call(world, method, fill(template, MISSING), world.b)
            assert b_answer.status_code == missing.status_code == 404, (method, path, b_answer.text)
            if method != "HEAD":  # no body
                status, body = without_request_id(missing)
                assert without_request_id(b_answer) == (
                    status, {**body, "error": body["error"].replace(MISSING, "a-fn"),
                             "function": "a-fn"})
        else:
            assert b_answer.status_code not in (401, 403), (method, path, b_answer.text)
        table.append((method, template, "tenant B", b_answer.status_code))
        for who, key in (("tenant A", world.a), ("admin", world.admin)):
            if template == "/api/v1/functions/{name}" and method == "DELETE":
                path = fill(template, "a-doomed-1" if who == "tenant A" else "a-doomed-2")
            if who == "tenant A" and template.startswith(ADMIN_ONLY):
                continue
            response = call(world, method, path, key)
            assert response.status_code not in (401, 403), (method, path, who, response.text)
            if "{name}" in template and response.status_code == 404:  # e.g. a tag gone already
                assert "function 'a-fn' not found" not in response.text, (method, path, who)
            table.append((method, template, who, response.status_code))
    Path(os.environ.get("TORPOR_AUTH_MATRIX", tmp_path / "matrix.txt")).write_text(
        "\n".join(f"{m} {p} {w} {s}" for m, p, w, s in table) + "\n")


@pytest.mark.parametrize("path", ["/api/v1/billing?function=a-fn", "/api/v1/instances?function=a-fn"])
def test_function_query_of_another_tenant_is_404(world: World, path: str) -> None:
    """``?function=`` naming another tenant's function: 404 as for one that does not exist."""
    theirs = call(world, "GET", path, world.b)
    missing = call(world, "GET", path.replace("a-fn", MISSING), world.b)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"] == "function 'a-fn' not found"
    assert call(world, "GET", path, world.a).status_code == 200


def test_lists_show_only_the_tenants_functions(world: World) -> None:
    """Function lists, instances, bills, the console's overview and /v1/models: a tenant sees its
    own, admin sees every tenant's."""
    def names(key: str, path: str, field: str = "name") -> set[str]:
        data = call(world, "GET", path, key).json()
        rows = data["functions"] if isinstance(data, dict) and "functions" in data else data
        return {row[field] for row in rows}

    a_fns = {"a-fn", "a-doomed-1", "a-doomed-2"} & {
        f["name"] for f in world.srv.http.get("/api/v1/functions").json()} | {"a-fn"}
    assert names(world.a, "/api/v1/functions") == a_fns
    assert names(world.b, "/api/v1/functions") == {"b-fn"}
    assert names(world.admin, "/api/v1/functions") >= a_fns | {"b-fn", "pub"}
    assert names(world.a, "/api/v1/console/overview") == a_fns
    assert names(world.b, "/api/v1/console/overview") == {"b-fn"}
    assert {r["function"] for r in call(world, "GET", "/api/v1/instances", world.b).json()} == set()
    assert "a-fn" in {r["function"] for r in call(world, "GET", "/api/v1/instances", world.a).json()}
    assert "a-fn" not in names(world.b, "/api/v1/billing", "function")
    assert "a-fn" in names(world.a, "/api/v1/billing", "function")
    assert "a-fn" not in names(world.b, "/api/v1/console/billing", "function")
    models = {who: {m["id"] for m in call(world, "GET", "/v1/models", key).json()["data"]}
              for who, key in (("a", world.a), ("b", world.b), ("admin", world.admin))}
    assert models == {"a": {"a-fn", "a-model"}, "b": set(), "admin": {"a-fn", "a-model"}}
    assert call(world, "GET", "/v1/models", None).json()["data"] == []
    assert call(world, "GET", "/v1/models/a-model", world.b).status_code == 404


def test_invocation_matrix(world: World) -> None:
    """``auth: key``: its tenant's and admin keys pass on /fn, OpenAI and OIP; no key, a bad, a
    revoked one and another tenant's: 401. ``auth: public``: no key needed."""
    client = httpx.Client(base_url=world.srv.url, timeout=30)
    calls = {
        "/fn": lambda h: client.post("/fn/a-fn/invoke", json={"x": 1}, headers=h),
        "openai": lambda h: client.post("/v1/embeddings", json={"model": "a-model", "input": "x"},
                                        headers=h),
        "oip": lambda h: client.get("/v2/models/a-fn/ready", headers=h),
    }
    results = {}
    for door, send in calls.items():
        for who, key in (("none", None), ("bad", BAD), ("revoked", world.revoked), ("b", world.b),
                         ("a", world.a), ("admin", world.admin)):
            response = send(bearer(key) if key else {})
            results[door, who] = response.status_code
            if door == "openai" and who in ("a", "admin"):  # it reached echo's instance
                assert response.json()["error"]["message"] == (
                    "no route POST /v1/embeddings in the torpor runtime")
            if response.status_code == 401:
                assert response.headers["www-authenticate"] == 'Bearer realm="torpor"'
    client.close()
    for door in calls:
        assert [results[door, who] for who in ("none", "bad", "revoked", "b")] == [401] * 4, results
    assert results["/fn", "a"] == results["/fn", "admin"] == 200
    assert results["oip", "a"] == results["oip", "admin"] == 200
    bare = httpx.post(f"{world.srv.url}/fn/a-fn/invoke", json={})
    assert bare.json()["reason"] == "unauthorized" and bare.json()["function"] == "a-fn"
    assert httpx.post(f"{world.srv.url}/fn/pub/invoke", json={"x": 2}).json()["echo"] == {"x": 2}


def test_the_key_that_let_a_request_in_never_reaches_the_function(world: World,
                                                                    tmp_path: Path) -> None:
    """A tenant's function never sees the caller's torpor key (an admin's would reach a tenant's
    code): /fn and OIP take it off; a public function gets ``Authorization`` as sent (it may be its
    own scheme). The other headers pass."""
    folder = ROOT / "tests" / "functions" / "headers"
    for name, auth in (("a-headers", "key"), ("pub-headers", "public")):
        copy = tmp_path / name
        copy.mkdir()
        (copy / "server.py").write_bytes((folder / "server.py").read_bytes())
        (copy / "torpor.yaml").write_text((folder / "torpor.yaml").read_text().replace(
            "name: headers", f"name: {name}\nauth: {auth}"))
        assert deploy_as(world.srv, world.a, copy).status_code == 201
    client = httpx.Client(base_url=world.srv.url, timeout=30)
    try:
        for key in (world.a, world.admin):
            seen = client.post("/fn/a-headers/invoke", json={}, headers={**bearer(key), "x-mine": "1"})
            assert seen.status_code == 200, seen.text
            assert "authorization" not in seen.json()["headers"]
            assert seen.json()["headers"]["x-mine"] == "1"
            oip = client.post("/v2/models/a-headers/infer", json={"inputs": []}, headers=bearer(key))
            assert oip.status_code == 200 and "authorization" not in oip.json()["headers"], oip.text
        public = client.post("/fn/pub-headers/invoke", json={},
                             headers={"authorization": "Basic dXNlcjpwdw=="})
        assert public.json()["headers"]["authorization"] == "Basic dXNlcjpwdw=="
    finally:
        client.close()


def test_another_tenants_name_cannot_be_taken(world: World, tmp_path: Path) -> None:
    """Names are global: tenant B deploying a name tenant A has is refused (409), A's function is
    untouched; admin deploying it makes a new revision that stays A's."""
    taken = deploy_as(world.srv, world.b, make_function(tmp_path, "echo", name="a-fn"))
    assert (taken.status_code, taken.json()["reason"], taken.json()["error"]) == (
        409, "conflict", "function name 'a-fn' is taken by another tenant; choose another name")
    revision = call(world, "GET", "/api/v1/functions/a-fn", world.a).json()["revision"]
    redeployed = deploy_as(world.srv, world.admin, make_function(tmp_path, "echo", name="a-fn",
                                                                 openai={"models": ["a-model"]}))
    assert redeployed.json()["revision"] == revision + 1
    assert call(world, "GET", "/api/v1/functions/a-fn", world.a).status_code == 200
    assert call(world, "GET", "/api/v1/functions/a-fn", world.b).status_code == 404


def test_keys_never_stored_in_clear(world: World) -> None:
    """No file under the data dir holds a key (or its secret part), admin.key aside, which is 0600."""
    data_dir = world.srv.data_dir
    admin_key = data_dir / "admin.key"
    assert stat.S_IMODE(admin_key.stat().st_mode) == 0o600
    assert admin_key.read_text().strip() == world.admin
    files = [p for p in data_dir.rglob("*") if p.is_file() and p != admin_key]
    assert data_dir / "torpor.db" in files
    for key in world.keys.values():
        secret = key.split("_", 2)[2].encode()  # tp_<id>_<secret>; the secret may hold "_"
        for path in files:
            data = path.read_bytes()
            assert key.encode() not in data and secret not in data, path
    # what the store holds, read through SQLite (the WAL included): hashes, never a key
    with sqlite3.connect(f"file:{data_dir / 'torpor.db'}?mode=ro", uri=True) as db:
        dump = "\n".join(db.iterdump())
    for key in world.keys.values():
        assert key not in dump and key.split("_", 2)[2] not in dump  # the secret may hold "_"
        assert hashlib.sha256(key.encode()).hexdigest() in dump


def test_quota_max_functions_refuses_the_deploy(make_server: Any, tmp_path: Path) -> None:
    """Past max_functions a new function is refused with the quota, current and limit; a new
    revision of one it has is not a new function."""
    srv = make_server()
    key = new_key(srv, "team-a")["key"]
    quota = srv.http.put("/api/v1/tenants/team-a/quota", json={"max_functions": 1})
    assert quota.json() == {"tenant": "team-a", "max_functions": 1, "max_instances": None,
                            "max_gpus": 30.0}
    first = make_function(tmp_path, "echo", name="first")
    assert deploy_as(srv, key, first).status_code == 201
    refused = deploy_as(srv, key, make_function(tmp_path, "echo", name="second"))
    assert refused.status_code == 403
    body = refused.json()
    body.pop("request_id")
    assert body == {
        "error": "quota max_functions of tenant 'team-a' reached: 1 of 1 functions deployed; "
                 "delete one or raise it (torpor keys quota team-a --max-functions N)",
        "reason": "quota_exceeded", "function": None, "tenant": "team-a",
        "quota": "max_functions", "current": 1, "limit": 1}
    again = deploy_as(srv, key, first)
    assert (again.status_code, again.json()["revision"]) == (201, 2)
    assert srv.http.get("/api/v1/functions/second").status_code == 404
    # admin's own tenant is not team-a: its deploys are not counted against team-a's quota
    assert srv.deploy(make_function(tmp_path, "echo", name="admins"))["name"] == "admins"
    tenants = {t["tenant"]: t for t in srv.http.get("/api/v1/tenants").json()}
    assert (tenants["team-a"]["functions"], tenants["default"]["functions"]) == (1, 1)


def test_quota_max_instances_waits_then_proceeds(make_server: Any, tmp_path: Path) -> None:
    """With max_instances 1 held by one function, a request to the tenant's other function waits,
    its reason in `torpor get` and the events; when the instance is freed, it is served."""
    srv = make_server()
    key = new_key(srv, "team-a")["key"]
    srv.http.put("/api/v1/tenants/team-a/quota", json={"max_instances": 1})
    for name in ("first", "second"):
        spec = make_function(tmp_path, "echo", name=name, queue={"timeout_s": 60})
        assert deploy_as(srv, key, spec).status_code == 201
    assert srv.http.post("/fn/first/invoke", json={}, headers=bearer(key)).status_code == 200
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(srv.http.post, "/fn/second/invoke", json={"n": 2},
                              headers=bearer(key), timeout=60)
        reason = "waiting for tenant 'team-a''s quota max_instances: 1 of 1 instances live"
        srv.wait_for(lambda: srv.function("second")["waiting"] == reason, what="the wait's reason")
        assert reason in [e["message"] for e in srv.function("second")["events"]]
        assert srv.instances("second") == []
        shown = torpor_cli("get", "second", server=srv.url)
        assert f"waiting: {reason}" in shown.stdout, shown.stdout + shown.stderr
        time.sleep(0.5)
        assert not waiting.done()
        assert srv.http.delete("/api/v1/functions/first", headers=bearer(key)).status_code == 200
        answer = waiting.result(timeout=60)
    assert (answer.status_code, answer.json()["echo"]) == (200, {"n": 2})
    assert srv.function("second")["waiting"] is None


def serve_args(port: int, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torpor", "serve", "--port", str(port), "--data-dir",
            str(data_dir), *extra]


@pytest.mark.parametrize("how", ["flag", "config"])
def test_auth_off_refused_off_loopback(tmp_path: Path, how: str) -> None:
    """--auth off (or `auth: off` in the config) on 0.0.0.0: refused with the reason, nothing served."""
    data_dir = tmp_path / "data"
    extra = ["--host", "0.0.0.0"]
    if how == "flag":
        extra += ["--auth", "off"]
    else:
        config = tmp_path / "config.yaml"
        config.write_text("auth: off\n")
        extra += ["--config", str(config)]
    result = subprocess.run(serve_args(free_port(), data_dir, *extra), capture_output=True,
                            text=True, timeout=60, cwd=ROOT, env={**os.environ, "NO_COLOR": "1"})
    what = "--auth off" if how == "flag" else "auth: off in the server config"
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {what} is refused on 0.0.0.0: without API keys anyone who reaches the port could "
        "deploy and run code on this machine, so auth may be off only on a loopback address "
        "(--host 127.0.0.1)")


def test_auth_off_on_loopback_needs_no_key(tmp_path: Path) -> None:
    """--auth off on 127.0.0.1: the API and a key function answer without a key; no key is made."""
    srv = TorporServer(tmp_path / "data", extra_args=["--auth", "off"])
    try:
        assert not (tmp_path / "data" / "admin.key").exists()
        folder = make_function(tmp_path, "echo", name="open")
        _, raw, base_dir = load_spec_file(folder)
        archive = pack_dir(base_dir)
        with httpx.Client(base_url=srv.url, timeout=30) as bare:
            assert bare.put(f"/api/v1/code/{archive.digest}", content=archive.data).status_code == 201
            assert bare.post("/api/v1/functions", json={"spec": raw, "code": archive.digest}
                             ).status_code == 201
            assert bare.post("/fn/open/invoke", json={"k": 1}).json()["echo"] == {"k": 1}
            assert bare.get("/api/v1/nodes").status_code == 200
        assert "auth is off" in srv.log()
    finally:
        srv.stop()


def test_cli_keys_end_to_end(make_server: Any, tmp_path: Path) -> None:
    """keys create prints the key once; ls lists it by id; the key works, then revoke ends it;
    quota sets and shows the limits; a tenant's key may not manage keys; the CLI on the server's
    machine finds admin.key in the data dir by itself."""
    srv = make_server()
    created = torpor_cli("keys", "create", "--tenant", "team-a", server=srv.url)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    assert key.startswith(f"tp_{key_id}_") and len(key) == 3 + 12 + 1 + 43
    assert f"created key {key_id} for tenant team-a; it is shown only this once" in created.stderr
    listed = torpor_cli("keys", "ls", server=srv.url)
    assert listed.returncode == 0, listed.stderr
    rows = [[cell for cell in line.split() if cell not in ("│", "┃")]
            for line in listed.stdout.splitlines()]
    assert [key_id, "team-a", "no"] in [row[:3] for row in rows], listed.stdout
    assert key not in listed.stdout
    assert torpor_cli("ls", server=srv.url, api_key=key).returncode == 0
    for args in (["--api-key", key, "ls"], ["ls", "--api-key", key], ["ls", f"--api-key={key}"]):
        given = torpor_cli(*args, "--server", srv.url, api_key=BAD)  # the option wins over the env
        assert given.returncode == 0, (args, given.stderr)
    wrong = torpor_cli("ls", "--api-key", BAD, server=srv.url)
    assert wrong.stderr.strip() == "error: the API key is not valid: it is unknown or was revoked"
    refused = torpor_cli("keys", "ls", server=srv.url, api_key=key)
    assert refused.returncode == 1
    assert "GET /api/v1/keys needs an admin key; tenant 'team-a''s key may not" in refused.stderr
    quota = torpor_cli("keys", "quota", "team-a", "--max-functions", "3", "--max-gpus", "none",
                       server=srv.url)
    assert quota.stdout.strip() == "team-a: functions 0/3  instances 0/-  gpus 0/-", quota.stderr
    revoked = torpor_cli("keys", "revoke", key_id, server=srv.url)
    assert revoked.stdout.strip() == f"revoked key {key_id} of tenant team-a"
    after = torpor_cli("ls", server=srv.url, api_key=key)
    assert (after.returncode, after.stderr.strip()) == (
        1, "error: the API key is not valid: it is unknown or was revoked")
    again = torpor_cli("keys", "revoke", key_id, server=srv.url)
    assert f"no key '{key_id}' that is not revoked already" in again.stderr
    env = {k: v for k, v in os.environ.items() if k != "TORPOR_API_KEY"}
    local = subprocess.run([sys.executable, "-m", "torpor", "ls", "--server", srv.url],
                           capture_output=True, text=True, timeout=60, cwd=ROOT,
                           env={**env, "TORPOR_HOME": str(srv.data_dir)})
    assert local.returncode == 0, local.stderr
    elsewhere = subprocess.run([sys.executable, "-m", "torpor", "ls", "--server", srv.url],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path,
                               env={**env, "TORPOR_HOME": str(tmp_path / "nowhere")})
    assert elsewhere.returncode == 1 and "this API needs an API key" in elsewhere.stderr


def test_admin_key_made_once_and_logged(make_server: Any, tmp_path: Path) -> None:
    """The first start makes the admin key and logs it once; a restart keeps it and logs none."""
    data_dir = tmp_path / "kept"
    srv = make_server(data_dir=data_dir)
    assert srv.log().count(srv.api_key) == 1
    srv.stop()
    again = make_server(data_dir=data_dir)
    assert again.api_key == srv.api_key
    assert "created admin API key" not in again.log()
    assert again.http.get("/api/v1/functions").status_code == 200
    # revoking the only admin key and restarting is how it is replaced
    admin_id = again.api_key.split("_")[1]
    assert again.http.delete(f"/api/v1/keys/{admin_id}").json()["revoked_at"] is not None
    assert again.http.get("/api/v1/functions").status_code == 401
    again.stop()
    third = make_server(data_dir=data_dir)
    assert third.api_key != srv.api_key and third.log().count(third.api_key) == 1
    old = third.http.get("/api/v1/functions", headers=bearer(srv.api_key))
    assert old.status_code == 401


def test_quota_max_gpus_waits_for_the_tenants_share(make_server: Any, tmp_path: Path) -> None:
    """Two declared 16384 MB GPUs, tenant A's max_gpus 0.5: one 6144 MB slice (0.375) fits, a
    second would hold 0.75, so the second request waits, saying why, and is served by the first
    instance once it is free; the GPUs had room, the quota did not."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "config.yaml").write_text(
        "gpus:\n  - {name: T4, memory_mb: 16384}\n  - {name: T4, memory_mb: 16384}\n")
    srv = make_server(data_dir=data_dir)
    key = new_key(srv, "team-a")["key"]
    srv.http.put("/api/v1/tenants/team-a/quota", json={"max_gpus": 0.5})
    assert deploy_as(srv, key, make_function(tmp_path, "gpuenv")).status_code == 201
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(
            lambda n: srv.http.post("/fn/gpuenv/invoke", json={"sleep_s": 2, "n": n},
                                    headers=bearer(key)), range(2)))
    assert [r.status_code for r in responses] == [200, 200]
    assert len({r.json()["instance"] for r in responses}) == 1
    events = [e["message"] for e in srv.function("gpuenv")["events"]]
    assert "waiting for tenant 'team-a''s quota max_gpus: need 0.375 GPU, 0.375 of 0.5 held" in events
    tenants = {t["tenant"]: t for t in srv.http.get("/api/v1/tenants").json()}
    assert (tenants["team-a"]["max_gpus"], tenants["team-a"]["gpus"]) == (0.5, 0.375)


@pytest.mark.parametrize(("mode", "expected"), [
    ("admin", (401, 403, 200)), ("key", (401, 200, 200)), ("public", (200, 200, 200))])
async def test_metrics_access_follows_the_config(tmp_path: Path, mode: str,
                                                 expected: tuple[int, int, int]) -> None:
    """/metrics with no key, a tenant's key and an admin key, as `auth: {metrics: ...}` says."""
    from torpor.api.app import create_api
    from torpor.platform import Platform

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.yaml").write_text(f"auth: {{metrics: {mode}}}\n")
    platform = Platform(tmp_path / "data")
    try:
        _, admin = await platform.create_key("default", admin=True)
        _, tenant = await platform.create_key("team-a")
        transport = httpx.ASGITransport(app=create_api(platform))
        async with httpx.AsyncClient(transport=transport, base_url="http://torpor") as client:
            got = tuple([(await client.get("/metrics", headers=headers)).status_code
                         for headers in ({}, bearer(tenant), bearer(admin))])
    finally:
        platform.store.close()
    assert got == expected


@pytest.mark.parametrize(("body", "error"), [
    ({"max_functions": -1}, "body.max_functions: Input should be greater than or equal to 0"),
    ({"max_instances": 2**70}, "body.max_instances: Input should be less than or equal to 1000000"),
    ({"max_gpus": 1e300}, "body.max_gpus: Input should be less than or equal to 1000000"),
    ({"max_cpus": 1}, "body.max_cpus: Extra inputs are not permitted"),
])
async def test_quota_values_checked(tmp_path: Path, body: dict[str, Any], error: str) -> None:
    """A quota out of range is a 422 naming the field, never a store error."""
    from torpor.api.app import create_api
    from torpor.platform import Platform

    (tmp_path / "data").mkdir()
    platform = Platform(tmp_path / "data")
    try:
        _, admin = await platform.create_key("default", admin=True)
        transport = httpx.ASGITransport(app=create_api(platform))
        async with httpx.AsyncClient(transport=transport, base_url="http://torpor") as client:
            response = await client.put("/api/v1/tenants/team-a/quota", json=body,
                                        headers=bearer(admin))
            bad_name = await client.put("/api/v1/tenants/Team_A/quota", json={},
                                        headers=bearer(admin))
    finally:
        platform.store.close()
    assert (response.status_code, response.json()["errors"]) == (422, [error])
    assert (bad_name.status_code, bad_name.json()["error"]) == (
        400, "tenant: 'Team_A' is not a tenant name: 1-63 lowercase letters, digits or '-', "
             "starting and ending with a letter or digit")
