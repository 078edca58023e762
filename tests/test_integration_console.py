"""The console, /metrics and logs against a real ``torpor serve`` with two functions and traffic.

A real browser (Debian's ``chromium``, headless) loads ``/ui``; the test reads the DOM it built and
keeps screenshots under the test's temporary directory. ``promtool`` checks the live ``/metrics``.
``torpor logs -f`` follows a running instance and shows a request's line by its request id.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TorporServer, make_function

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMTOOL = shutil.which("promtool")


def browse(url: str, tmp_path: Path, screenshot: str | None = None) -> str:
    """The DOM after the page's scripts ran (virtual time: the polls finish before the dump)."""
    assert CHROMIUM is not None
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--hide-scrollbars",
            "--window-size=1400,1700", "--virtual-time-budget=6000"]
    if screenshot is not None:
        args.append(f"--screenshot={tmp_path / screenshot}")
    else:
        args.append("--dump-dom")
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def server(make_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TorporServer:
    """echo and chatty deployed, each has served traffic, and the sampler has history."""
    monkeypatch.setenv("TORPOR_HISTORY_SAMPLE_S", "0.3")
    chatty = make_function(tmp_path, "chatty")
    # the KPA keeps echo's instance through its 60 s window for the pages to show it (the default
    # would let it go well under a second after its calls, which come milliseconds apart)
    echo = make_function(tmp_path, "echo", scaling={"policy": "kpa"})
    srv: TorporServer = make_server([echo, chatty])
    for _ in range(3):
        for n in range(10):
            assert srv.invoke("echo", {"n": n}).status_code == 200
            assert srv.invoke("chatty", {"n": n}).status_code == 200
        time.sleep(0.35)
    return srv


@pytest.mark.skipif(CHROMIUM is None, reason="chromium missing: `make test` installs it (Debian)")
def test_browser_shows_functions_instances_and_charts(server: TorporServer, tmp_path: Path) -> None:
    """Without a key the page asks for one; with the admin key (handed over in the fragment) the
    functions page lists both; echo's page shows its ready instance, a chart with points and the
    timeline; billing lists both functions and the local pool."""
    locked = browse(f"{server.url}/ui/", tmp_path)
    assert 'id="key-form"' in locked and 'data-function="echo"' not in locked
    assert "this API needs an API key" in locked
    key = f"key={server.api_key}"
    overview = browse(f"{server.url}/ui/#/?{key}", tmp_path)
    assert 'data-loaded="true"' in overview
    assert re.search(r'data-function="echo".*?<span class="state ready">ready 1</span>', overview, re.S)
    assert 'data-function="chatty"' in overview

    page = browse(f"{server.url}/ui/#/fn/echo?{key}", tmp_path)
    assert 'data-loaded="true"' in page
    instance = server.instances("echo")[0]["id"]
    assert re.search(rf'data-instance="{instance}".*?<span class="state ready">ready</span>', page, re.S)
    points = int(re.search(r'id="chart-rps"[^>]*data-points="(\d+)"', page).group(1))  # type: ignore[union-attr]
    assert points > 0
    assert "<canvas" in page  # uPlot drew it
    assert re.search(r'id="timeline"[^>]*data-rows="[1-9]', page)
    assert "desired 1 · ready 1" in page

    billing = browse(f"{server.url}/ui/#/billing?{key}", tmp_path)
    assert 'data-function="echo"' in billing and 'data-pool="local"' in billing

    browse(f"{server.url}/ui/#/fn/echo?{key}", tmp_path, screenshot="function-page.png")
    browse(f"{server.url}/ui/#/?{key}", tmp_path, screenshot="functions-page.png")
    shot = tmp_path / "function-page.png"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if os.environ.get("TORPOR_SCREENSHOT_DIR"):  # how docs/console-function.png was made
        shutil.copy(shot, Path(os.environ["TORPOR_SCREENSHOT_DIR"]) / "console-function.png")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make test` installs it (Debian)")
def test_promtool_accepts_live_metrics(server: TorporServer) -> None:
    """The live /metrics, after traffic, passes ``promtool check metrics`` without a remark."""
    text = server.http.get("/metrics").content
    assert b'torpor_request_duration_seconds_count{function="echo",start="cold"}' in text
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_logs_follow_a_request_by_its_id(server: TorporServer) -> None:
    """``torpor logs chatty -f`` prints the instance's line for a request sent after it started,
    found by the request id the client chose (passed to the handler as torpor.request_id())."""
    env = {**os.environ, "TORPOR_SERVER": server.url, "PYTHONUNBUFFERED": "1",
           "TORPOR_API_KEY": server.api_key}
    assert server.invoke("chatty", {"warm": 1}).status_code == 200  # a line for the tail to show
    follower = subprocess.Popen([sys.executable, "-m", "torpor", "logs", "chatty", "-f", "--tail", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT)
    try:
        seen: list[str] = []
        selector = selectors.DefaultSelector()
        assert follower.stdout is not None
        selector.register(follower.stdout, selectors.EVENT_READ)
        sent = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                seen.append(follower.stdout.readline())
            elif not sent and seen:  # the tail is out: the follow is running
                response = server.invoke("chatty", {"trace": 1}, headers={"x-request-id": "follow-me-7"})
                assert response.json() == {"request_id": "follow-me-7"}
                assert response.headers["x-torpor-request-id"] == "follow-me-7"
                sent = True
            if any("request_id=follow-me-7" in line for line in seen):
                break
        line = next(line for line in seen if "request_id=follow-me-7" in line)
        instance = server.instances("chatty")[0]["id"]
        assert line == f"{instance} | chatty: handled request_id=follow-me-7 payload={{'trace': 1}}\n"
    finally:
        follower.terminate()
        follower.wait(10)
