"""Idle mode on real processes: provisioned instances freeze when idle and thaw on a request."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_function

pytestmark = pytest.mark.timeout(90)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def only_instance(srv: Any) -> dict[str, Any]:
    (instance,) = srv.instances("sleepy")
    return dict(instance)


class TestNothingOutlivesTheServer:
    def test_sigkill_with_a_frozen_instance(self, make_server: Any, tmp_path: Path) -> None:
        """A frozen instance cannot act on its server's death; the guard thaws and stops it."""
        from tests.conftest import process_alive

        srv = make_server([make_function(tmp_path, "sleepy")])
        srv.wait_for(lambda: srv.instances("sleepy") and only_instance(srv)["state"] == "frozen",
                     what="frozen")
        pids = [only_instance(srv)["pid"], srv.function("sleepy")["template"]["pid"]]
        srv.stop(signal.SIGKILL)
        srv.wait_for(lambda: not any(process_alive(p) for p in pids), timeout_s=10,
                     what="no process left behind")
        guard_log = srv.data_dir / "logs" / "guard.log"
        srv.wait_for(lambda: " is gone; thawed 1 cgroup(s)" in guard_log.read_text(), timeout_s=10,
                     what="the guard's report")


class TestFreezeThaw:
    def test_frozen_uses_no_cpu_and_thaws_on_request(self, make_server: Any, tmp_path: Path) -> None:
        """Idle → frozen (CPU time stands still); a request thaws it and gets the right answer."""
        srv = make_server([make_function(tmp_path, "sleepy")])
        srv.wait_for(lambda: [i for i in srv.instances("sleepy") if i["state"] == "frozen"],
                     what="frozen provisioned instance")
        pid = only_instance(srv)["pid"]
        before = cpu_ticks(pid)
        time.sleep(0.6)
        assert cpu_ticks(pid) == before  # its spinning thread is stopped

        response = srv.invoke("sleepy", {"q": 1})
        assert response.status_code == 200
        assert response.headers["x-torpor-start"] == "thawed"
        body = response.json()
        assert (body["echo"], body["pid"], body["freezes"], body["thaws"]) == ({"q": 1}, pid, 1, 1)
        assert cpu_ticks(pid) >= before  # running again
        # idle again → frozen again, the same instance (provisioned instances are never removed)
        srv.wait_for(lambda: only_instance(srv)["state"] == "frozen", what="frozen again")
        assert only_instance(srv)["pid"] == pid

    def test_request_during_freeze_waits(self, make_server: Any, tmp_path: Path) -> None:
        """A request that arrives while on_freeze runs waits for the freeze, then the thaw."""
        folder = make_function(tmp_path, "sleepy", env={"FREEZE_DELAY_S": "1.0"},
                               scaling={"max_instances": 1})  # no other instance can answer
        srv = make_server([folder])
        # idle after 0.3 s, then 1 s inside on_freeze: send the request in the middle of it
        srv.wait_for(lambda: srv.instances("sleepy") and only_instance(srv)["idle"] == "freezing",
                     what="freezing")
        started = time.monotonic()
        response = srv.invoke("sleepy", {"mid": "freeze"})
        waited = time.monotonic() - started
        assert response.status_code == 200
        assert response.json()["echo"] == {"mid": "freeze"}
        assert response.json()["freezes"] == 1 and response.json()["thaws"] == 1
        assert response.headers["x-torpor-start"] == "thawed"
        assert 0.1 < waited < 5  # it waited for the freeze to finish, then for the thaw

    def test_wake_many_concurrent(self, make_server: Any, tmp_path: Path) -> None:
        """Several requests at a frozen instance all get answers; load accounting returns to 0."""
        srv = make_server([make_function(tmp_path, "sleepy")])
        srv.wait_for(lambda: srv.instances("sleepy") and only_instance(srv)["state"] == "frozen",
                     what="frozen")
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda n: srv.invoke("sleepy", {"n": n}), range(4)))
        assert sorted(r.json()["echo"]["n"] for r in results) == [0, 1, 2, 3]
        fn = srv.function("sleepy")
        assert (fn["in_flight"], fn["queued"]) == (0, 0)
