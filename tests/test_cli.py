"""The CLI as a user runs it: one clear sentence and exit code 1 on every error, --json on reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, make_function, torpor_cli
from torpor.code import pack_dir

pytestmark = pytest.mark.timeout(90)


class TestWithoutServer:
    def test_unreachable_server_is_one_sentence(self) -> None:
        """No server: exit 1, one line naming the URL, no traceback."""
        result = torpor_cli("ls", server="http://127.0.0.1:9")
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "error: cannot reach the torpor server at http://127.0.0.1:9: is `torpor serve` "
            "running? (set --server or TORPOR_SERVER)"
        ]
        assert "Traceback" not in result.stderr

    def test_bad_spec_names_the_field_before_contacting_a_server(self, tmp_path: Path) -> None:
        """A bad spec is rejected locally, naming file and field."""
        folder = make_function(tmp_path, "echo", scaling={"max_instances": 0}, colour="blue")
        result = torpor_cli("deploy", str(folder), server="http://127.0.0.1:9")
        assert result.returncode == 1
        line = result.stderr.strip()
        assert line.startswith(f"error: {folder / 'torpor.yaml'}: ")
        assert "scaling.max_instances: Input should be greater than or equal to 1" in line
        assert "colour: unknown field" in line

    def test_missing_spec_file(self, tmp_path: Path) -> None:
        """Deploying a folder without torpor.yaml says which file is missing."""
        result = torpor_cli("deploy", str(tmp_path))
        assert result.returncode == 1
        assert result.stderr.strip() == f"error: {tmp_path / 'torpor.yaml'}: file not found"

    def test_help_lists_commands(self) -> None:
        """`torpor --help` lists every command."""
        result = torpor_cli("--help")
        assert result.returncode == 0
        for command in ("serve", "deploy", "ls", "get", "instances", "invoke", "delete", "nodes"):
            assert command in result.stdout


class TestAgainstServer:
    def test_deploy_invoke_get_delete(self, make_server: Any) -> None:
        """The user's loop: deploy, invoke, inspect, delete."""
        srv = make_server()
        deployed = torpor_cli("deploy", str(EXAMPLES / "echo"), "--json", server=srv.url)
        assert deployed.returncode == 0, deployed.stderr
        assert json.loads(deployed.stdout)["revision"] == 1

        invoked = torpor_cli("invoke", "echo", "--data", '{"q": 1}', server=srv.url)
        assert invoked.returncode == 0, invoked.stderr
        assert json.loads(invoked.stdout)["echo"] == {"q": 1}

        listed = json.loads(torpor_cli("ls", "--json", server=srv.url).stdout)
        assert [(f["name"], f["status"], f["instances"]) for f in listed] == [("echo", "ready", 1)]

        got = json.loads(torpor_cli("get", "echo", "--json", server=srv.url).stdout)
        assert [i["state"] for i in got["instance_list"]] == ["ready"]
        assert {e["kind"] for e in got["events"]} >= {"deployed", "started"}

        rows = json.loads(torpor_cli("instances", "echo", "--json", server=srv.url).stdout)
        assert {k for k in rows[0]} >= {"id", "function", "state", "pid", "started_at"}
        assert (rows[0]["node"], rows[0]["pool"]) == ("local", "local")

        nodes = json.loads(torpor_cli("nodes", "--json", server=srv.url).stdout)
        assert [(n["id"], n["pool"], n["alive"], n["instances"]) for n in nodes] == [
            ("local", "local", True, [rows[0]["id"]])]
        by_pool = torpor_cli("bill", "--by", "pool", server=srv.url)
        assert by_pool.returncode == 0, by_pool.stderr
        assert [p["pool"] for p in json.loads(
            torpor_cli("bill", "--json", server=srv.url).stdout)["pools"]] == ["local"]

        table = torpor_cli("instances", server=srv.url)
        assert rows[0]["id"] in table.stdout

        deleted = torpor_cli("delete", "echo", server=srv.url)
        assert deleted.returncode == 0
        assert srv.wait_for(lambda: srv.http.get("/api/v1/functions").json() == [], what="deleted")
        assert srv.invoke("echo").status_code == 404

    def test_bad_spec_deploys_nothing(self, make_server: Any, tmp_path: Path) -> None:
        """A spec the server rejects leaves the function list unchanged."""
        srv = make_server()
        archive = pack_dir(EXAMPLES / "echo")
        assert srv.http.put(f"/api/v1/code/{archive.digest}", content=archive.data).status_code == 201
        response = srv.http.post("/api/v1/functions", json={
            "spec": {"name": "Bad_Name", "runtime": {"handler": "model:Echo"}},
            "code": archive.digest,
        })
        assert response.status_code == 422
        assert response.json()["errors"] == [
            "name: must be a DNS label: 1-63 lowercase letters, digits or '-', starting and "
            "ending with a letter or digit (got 'Bad_Name')"
        ]
        assert srv.http.get("/api/v1/functions").json() == []

    def test_unknown_pool_is_refused_at_deploy(self, make_server: Any, tmp_path: Path) -> None:
        """placement.pools must name a pool of this server; nothing is deployed otherwise."""
        srv = make_server()
        folder = make_function(tmp_path, "echo", placement={"pools": ["onprem"]})
        result = torpor_cli("deploy", str(folder), server=srv.url)
        assert result.returncode == 1
        assert result.stderr.strip() == (f"error: {folder / 'torpor.yaml'}: placement.pools[0]: "
                                         "unknown pool 'onprem'; pools: local")
        assert srv.http.get("/api/v1/functions").json() == []

    def test_deploy_takes_uploaded_code_never_a_server_path(self, make_server: Any) -> None:
        """The API names code by the digest of an upload; a folder on the server is refused."""
        srv = make_server()
        spec = {"name": "echo", "runtime": {"handler": "model:Echo"}}
        by_path = srv.http.post("/api/v1/functions", json={
            "spec": spec, "base_dir": str(EXAMPLES / "echo"), "code": "0" * 64})
        assert by_path.status_code == 422
        assert by_path.json()["errors"] == ["body.base_dir: Extra inputs are not permitted"]
        missing = srv.http.post("/api/v1/functions", json={"spec": spec, "code": "0" * 64})
        assert missing.status_code == 400
        assert missing.json()["error"] == (
            f"code: no uploaded code with digest {'0' * 64}; upload it first "
            f"(PUT /api/v1/code/{'0' * 64})")
        archive = pack_dir(EXAMPLES / "echo")
        wrong = srv.http.put(f"/api/v1/code/{'1' * 64}", content=archive.data)
        assert wrong.status_code == 400
        assert wrong.json()["error"] == f"the archive's sha256 is {archive.digest}, not {'1' * 64}"
        assert srv.http.head(f"/api/v1/code/{archive.digest}").status_code == 404
        assert srv.http.put(f"/api/v1/code/{archive.digest}", content=archive.data).status_code == 201
        assert srv.http.head(f"/api/v1/code/{archive.digest}").status_code == 200
        assert srv.http.get("/api/v1/functions").json() == []

    def test_invoke_errors_and_unknown_function(self, make_server: Any) -> None:
        """Invoke of an unknown function and get of one: exit 1 with the server's sentence."""
        srv = make_server()
        result = torpor_cli("invoke", "ghost", "--data", "{}", server=srv.url)
        assert result.returncode == 1
        assert result.stderr.strip() == "error: ghost answered 404: function 'ghost' not found"
        got = torpor_cli("get", "ghost", server=srv.url)
        assert got.returncode == 1
        assert got.stderr.strip() == "error: function 'ghost' not found"
        bad_json = torpor_cli("invoke", "ghost", "--data", "{nope", server=srv.url)
        assert bad_json.returncode == 1
        assert bad_json.stderr.startswith("error: --data is not valid JSON")
