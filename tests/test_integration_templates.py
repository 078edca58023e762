"""Instances forked from a per-revision template: correct, isolated, rebuilt when needed."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FUNCTIONS, make_function, process_alive

pytestmark = pytest.mark.timeout(90)


def template(srv: Any, name: str) -> dict[str, Any]:
    return dict(srv.function(name)["template"] or {})


class TestForkedInstances:
    def test_forked_instances_share_no_mutable_state(self, make_server: Any) -> None:
        """Siblings forked from one template see their own module state and random stream."""
        srv = make_server([FUNCTIONS / "stateful"])
        srv.wait_for(lambda: template(srv, "stateful").get("state") == "ready", what="template")
        with ThreadPoolExecutor(2) as pool:
            # two concurrent slow-ish requests need two instances
            first, second = pool.map(lambda n: srv.invoke("stateful", {"add": n, "sleep_s": 0.5}),
                                     [5, 7])
        a, b = first.json(), second.json()
        assert a["instance"] != b["instance"]
        assert a["loaded_in"] == b["loaded_in"] == template(srv, "stateful")["pid"]
        assert {a["counter"], b["counter"]} == {5, 7}  # each saw only its own increment
        assert a["sum"] == b["sum"] == 499500
        assert a["random"] != b["random"]  # reseeded after the fork
        again = srv.invoke("stateful", {"add": 1}, headers={}).json()
        assert again["counter"] in (6, 8)
        rows = {r["id"]: r for r in srv.instances("stateful")}
        assert rows[a["instance"]]["cold_start"]["mode"] == "fork"
        assert template(srv, "stateful")["forks"] >= 2

    def test_template_crash_is_rebuilt(self, make_server: Any) -> None:
        """A template killed under its instances leaves them serving; the next cold start rebuilds it."""
        srv = make_server([FUNCTIONS / "stateful"])
        srv.wait_for(lambda: template(srv, "stateful").get("state") == "ready", what="template")
        old = template(srv, "stateful")["pid"]
        first = srv.invoke("stateful", {"crash_template": True})
        assert first.status_code == 200
        srv.wait_for(lambda: not process_alive(old), what="template gone")
        # its instance is not its child: still serving
        assert srv.invoke("stateful", {}).json()["instance"] == first.json()["instance"]
        # the template is rebuilt at once, and new instances fork from it
        srv.wait_for(lambda: template(srv, "stateful").get("state") == "ready"
                     and template(srv, "stateful")["pid"] != old, what="rebuilt template")
        # its replacement (after the old instance dies) forks from the rebuilt template
        os.kill(first.json()["pid"], signal.SIGKILL)
        srv.wait_for(lambda: first.json()["instance"] not in {i["id"] for i in srv.instances("stateful")},
                     what="killed instance noticed")
        body = srv.invoke("stateful", {}).json()
        assert body["instance"] != first.json()["instance"]
        assert body["loaded_in"] == template(srv, "stateful")["pid"]

    def test_revision_change_builds_new_template_and_retires_old(self, make_server: Any,
                                                                 tmp_path: Path) -> None:
        """A redeploy builds a template for the new revision and stops the old one."""
        folder = make_function(tmp_path, "stateful")
        srv = make_server([folder])
        srv.wait_for(lambda: template(srv, "stateful").get("state") == "ready", what="template")
        old = template(srv, "stateful")
        assert old["revision"] == 1
        srv.deploy(folder)
        srv.wait_for(lambda: template(srv, "stateful").get("revision") == 2
                     and template(srv, "stateful")["state"] == "ready", what="new template")
        srv.wait_for(lambda: not process_alive(old["pid"]), what="old template stopped")
        body = srv.invoke("stateful", {}).json()
        assert body["loaded_in"] == template(srv, "stateful")["pid"]

    def test_templates_off_spawns(self, make_server: Any, tmp_path: Path) -> None:
        """runtime.templates: false starts instances as plain processes; no template exists."""
        folder = make_function(tmp_path, "stateful", runtime={"handler": "model:Stateful",
                                                              "templates": False})
        srv = make_server([folder])
        body = srv.invoke("stateful", {}).json()
        assert body["loaded_in"] == body["pid"]
        assert srv.function("stateful")["template"] is None
        (row,) = srv.instances("stateful")
        assert row["cold_start"]["mode"] == "spawn"

    def test_import_error_through_template_is_503(self, make_server: Any) -> None:
        """A module that cannot import fails the template; requests get 503 with its stderr."""
        srv = make_server([FUNCTIONS / "badimport"])
        response = srv.invoke("badimport", {})
        assert response.status_code == 503
        error = response.json()["error"]
        assert "template: process exited with code 3 before listening" in error
        assert "No module named 'torpor_no_such_module'" in error

    def test_sigterm_stops_forked_instances_and_template(self, make_server: Any) -> None:
        """No forked instance or template survives the server's SIGTERM."""
        srv = make_server([FUNCTIONS / "stateful"])
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: srv.invoke("stateful", {"sleep_s": 0.5}), range(2)))
        pids = {r.json()["pid"] for r in results} | {template(srv, "stateful")["pid"]}
        assert srv.stop() == 0
        time.sleep(0.2)
        assert [p for p in pids if process_alive(p)] == []
