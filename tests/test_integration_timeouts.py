"""A timed-out request leaves its instance busy until it really finishes (issue 16 #1), end to end."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conftest import make_function


def test_requests_after_a_timeout_wait_for_the_busy_instance(make_server: Any, tmp_path: Path) -> None:
    """Sync predict sleeping 2.5 s, timeout_s 1, one instance: a 504, the instance shown busy, and
    the next two requests answered once it is free (not 504s from being sent to a busy instance)."""
    folder = make_function(tmp_path, "slow", timeout_s=1, scaling={"max_instances": 1})
    srv = make_server([folder])
    assert srv.invoke("slow", {"sleep_s": 0}).status_code == 200  # warm
    started = time.monotonic()
    timed_out = srv.invoke("slow", {"sleep_s": 2.5})
    assert timed_out.status_code == 504
    assert timed_out.json()["reason"] == "function_timeout"
    busy = timed_out.headers["x-torpor-instance"]
    (row,) = srv.instances("slow")
    assert (row["id"], row["state"], row["in_flight"]) == (busy, "busy", 1)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda n: srv.invoke("slow", {"n": n}), range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    assert {a.json()["instance"] for a in answers} == {busy}
    assert time.monotonic() - started >= 2.4  # they waited for the first request to finish
