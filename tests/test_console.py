"""The console's JSON endpoints, the logs endpoint and the page's assets, in-process on a FakeClock.

A platform whose reconciler never runs: functions are installed with ``apply`` and instances are
made by hand (``make_instance``), with their ledger intervals written straight to the store, so every
number the console shows is known exactly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from torpor.api import console
from torpor.api.app import create_api
from torpor.api.console import start_of_day
from torpor.api.sampler import Sampler
from torpor.backends import CodeRef
from torpor.clock import FakeClock
from torpor.lifecycle.instance import FunctionRuntime, Instance
from torpor.lifecycle.state import InstanceFacts
from torpor.metering.ledger import ledger_row
from torpor.platform import Platform
from torpor.spec import parse_spec

MIDNIGHT = 1_796_083_200.0  # 2026-12-01 00:00:00 UTC
NOON = MIDNIGHT + 12 * 3600


@dataclass
class Setup:
    platform: Platform
    clock: FakeClock
    sampler: Sampler
    client: httpx.AsyncClient
    app: FastAPI


def make_spec(name: str, tmp_path: Path, **overrides: Any) -> Any:
    raw = {"name": name, "runtime": {"command": ["python3", "-c", "pass"]}, **overrides}
    return parse_spec(raw, source="test", base_dir=tmp_path)


def deploy(setup: Setup, name: str, tmp_path: Path, **overrides: Any) -> FunctionRuntime:
    now = setup.clock.now()
    return setup.platform.reconciler.apply(make_spec(name, tmp_path, **overrides), 1,
                                           CodeRef("0" * 64, tmp_path),
                                           "test", now, now)


def make_instance(setup: Setup, fn: FunctionRuntime, suffix: str, started_at: float,
                  ready_at: float | None, frozen_at: float | None = None) -> Instance:
    """An instance with its facts, its record and its ledger intervals (starting, then ready)."""
    instance = Instance(
        id=f"{fn.name}-1-{suffix}", function=fn.name, revision=1,
        facts=InstanceFacts(started_at=started_at,
                            listening_at=None if ready_at is None else ready_at - 0.01,
                            ready_at=ready_at, frozen_at=frozen_at),
    )
    fn.instances[instance.id] = instance
    store = setup.platform.store
    info = ledger_row(instance.ledger_record(fn.spec))
    store.ledger_transition(info, "starting", started_at)
    if ready_at is not None:
        store.ledger_transition(info, "ready", ready_at)
    if frozen_at is not None:
        store.ledger_transition(info, "frozen", frozen_at)
    store.save_instance(instance.record())
    return instance


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    clock = FakeClock(NOON)
    (tmp_path / "data").mkdir()
    platform = Platform(tmp_path / "data", clock=clock)
    sampler = Sampler(platform, platform.metrics.requests)
    app = create_api(platform)
    console.install(app, platform, sampler)
    _, key = await platform.create_key("default", admin=True)  # auth is on, as in production
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://torpor",
                               headers={"authorization": f"Bearer {key}"})
    yield Setup(platform, clock, sampler, client, app)
    await client.aclose()
    platform.store.close()


def traffic(setup: Setup, name: str, latencies_s: list[float], status: int = 200) -> None:
    for seconds in latencies_s:
        setup.platform.metrics.requests.observe(name, "warm", status, seconds, b"rid", b"i")


class TestStartOfDay:
    def test_midnight_utc(self) -> None:
        """Cost "today" starts at midnight UTC."""
        assert start_of_day(NOON) == MIDNIGHT
        assert start_of_day(MIDNIGHT) == MIDNIGHT


class TestOverview:
    async def test_functions_states_rates_and_cost(self, setup: Setup, tmp_path: Path) -> None:
        """Each function: status, instances by state, req/s and p50/p99 over the minute, cold
        starts in the last hour, cost today against always-on."""
        alpha = deploy(setup, "alpha", tmp_path)
        deploy(setup, "beta", tmp_path)
        make_instance(setup, alpha, "a", NOON - 7200, NOON - 7199)  # a cold start 2 h ago
        make_instance(setup, alpha, "b", NOON - 10, NOON - 9)  # and one 9 s ago
        setup.sampler.sample(NOON)  # baseline
        traffic(setup, "alpha", [0.004] * 50 + [0.2] * 10)
        setup.clock.advance(30)
        setup.sampler.sample(setup.clock.now())
        response = await setup.client.get("/api/v1/console/overview")
        assert response.status_code == 200
        data = response.json()
        assert [f["name"] for f in data["functions"]] == ["alpha", "beta"]
        alpha_row, beta_row = data["functions"]
        assert alpha_row["status"] == "ready"
        assert alpha_row["instance_states"] == {"ready": 2}
        assert alpha_row["rps"] == 2.0  # 60 requests in 30 s
        # p50: rank 30 of 60 in the (0.0025, 0.005] bucket holding 50: 2.5 + 2.5 × 30/50 = 4 ms
        assert alpha_row["p50_ms"] == 4.0
        # p99: rank 59.4, bucket (0.1, 0.25] holds 10 above 50: 100 + 150 × 9.4/10 = 241 ms
        assert alpha_row["p99_ms"] == 241.0
        assert alpha_row["cold_starts_1h"] == 1
        # 2 CPU instances × 1 vCPU × 1 GB: active since midnight-ish; cost is positive and below
        # the always-on line, which keeps the peak (2) on from the first record (2 h ago)
        assert 0 < float(alpha_row["cost_today"]) <= float(alpha_row["always_on_today"])
        assert beta_row == {**beta_row, "status": "scaled_to_zero", "instances": 0, "rps": 0.0,
                            "p50_ms": None, "p99_ms": None, "cold_starts_1h": 0,
                            "cost_today": "0", "always_on_today": "0"}
        assert data["currency"] == "USD"

    async def test_cost_today_is_exact(self, setup: Setup, tmp_path: Path) -> None:
        """One CPU instance ready for the last hour: 3,600 s × (1 vCPU × 0.00002 + 1 GB × 0.000003)."""
        alpha = deploy(setup, "alpha", tmp_path)
        make_instance(setup, alpha, "a", NOON - 3600, NOON - 3600)
        data = (await setup.client.get("/api/v1/console/overview")).json()
        assert data["functions"][0]["cost_today"] == "0.0828"  # 3600 × 0.000023
        assert data["functions"][0]["always_on_today"] == "0.0828"  # the same instance kept on
        assert data["cost_today"] == "0.0828"


class TestFunctionPage:
    async def test_instances_timeline_series_autoscaler_events(self, setup: Setup,
                                                               tmp_path: Path) -> None:
        """Instances with placement and cold-start breakdown, the ledger as a timeline, the sampled
        series, the autoscaler's numbers and reason, and recent events."""
        alpha = deploy(setup, "alpha", tmp_path, resources={"gpu_memory_mb": 4096})
        make_instance(setup, alpha, "a", NOON - 100, NOON - 99.5, frozen_at=NOON - 50)
        setup.platform.store.add_event("alpha", NOON - 99.5, "started", "instance alpha-1-a ready")
        setup.sampler.sample(NOON)
        traffic(setup, "alpha", [0.01] * 10)
        setup.clock.advance(5)
        from torpor.store import history

        history.add_samples(setup.platform.store, setup.sampler.sample(setup.clock.now()))
        data = (await setup.client.get("/api/v1/console/functions/alpha")).json()
        assert data["window_s"] == 3600
        [instance] = data["instances"]
        assert instance["state"] == "frozen"
        assert instance["placement"] == {"device": "gpu", "gpus": 0, "gpu_memory_mb": 4096,
                                         "cpus": 1.0, "memory_mb": 1024}
        assert instance["pool"] == "local" and instance["node"]
        assert instance["cold_start"]["total_s"] == 0.5
        assert instance["cold_start"]["initialize_s"] == 0.01
        assert [(p["state"], p["start"], p["end"]) for p in data["timeline"]] == [
            ("starting", NOON - 100, NOON - 99.5), ("ready", NOON - 99.5, NOON - 50),
            ("frozen", NOON - 50, None)]
        [sample] = data["series"]
        assert sample["requests"] == 10 and sample["rps"] == 2.0
        assert sample["states"]["frozen"] == 1 and sample["ready"] == 0
        assert data["autoscaler"] == {"desired": 0, "provisioned": 0, "ready": 0, "panic": False,
                                      "reason": "deployed", "min_instances": 0, "max_instances": 10}
        assert data["events"][0]["message"] == "instance alpha-1-a ready"

    async def test_window_clips_the_timeline(self, setup: Setup, tmp_path: Path) -> None:
        """An interval that began before the window starts at the window's edge."""
        alpha = deploy(setup, "alpha", tmp_path)
        make_instance(setup, alpha, "a", NOON - 7200, NOON - 7100)
        data = (await setup.client.get("/api/v1/console/functions/alpha",
                                       params={"window_s": 600})).json()
        assert [(p["state"], p["start"]) for p in data["timeline"]] == [("ready", NOON - 600)]

    async def test_unknown_function_and_bad_window(self, setup: Setup) -> None:
        """404 for a function that does not exist; 400 for a window outside (0, 1 day]."""
        response = await setup.client.get("/api/v1/console/functions/nope")
        assert response.status_code == 404
        body = response.json()
        assert {k: body[k] for k in ("error", "reason", "function")} == {
            "error": "function 'nope' not found", "reason": "not_found", "function": "nope"}
        deploy(setup, "alpha", setup.platform.data_dir)
        response = await setup.client.get("/api/v1/console/functions/alpha",
                                          params={"window_s": 0})
        assert response.status_code == 400


class TestBilling:
    async def test_per_function_and_per_pool(self, setup: Setup, tmp_path: Path) -> None:
        """Active vs idle seconds and cost per function and per pool, since midnight by default."""
        alpha = deploy(setup, "alpha", tmp_path)
        beta = deploy(setup, "beta", tmp_path)
        make_instance(setup, alpha, "a", NOON - 100, NOON - 100, frozen_at=NOON - 40)
        make_instance(setup, beta, "b", NOON - 10, NOON - 10)
        data = (await setup.client.get("/api/v1/console/billing")).json()
        assert data["since_epoch_s"] == MIDNIGHT and data["until_epoch_s"] == NOON
        lines = {line["function"]: line for line in data["functions"]}
        assert (lines["alpha"]["active_seconds"], lines["alpha"]["idle_seconds"]) == ("60", "40")
        assert (lines["beta"]["active_seconds"], lines["beta"]["idle_seconds"]) == ("10", "0")
        [pool] = data["pools"]
        assert pool["pool"] == "local"
        assert (pool["active_seconds"], pool["idle_seconds"]) == ("70", "40")
        # 60 s × 0.000023 + 40 s × 0.000003 (idle: memory only) + 10 s × 0.000023
        assert data["cost"] == "0.00173"
        assert pool["cost"] == data["cost"]

    async def test_since_after_until(self, setup: Setup) -> None:
        """A window that ends before it starts is a 400 naming both ends."""
        response = await setup.client.get("/api/v1/console/billing",
                                          params={"since": NOON + 10, "until": NOON})
        assert response.status_code == 400
        assert "must be before" in response.json()["error"]


def write_log(setup: Setup, function: str, name: str, text: str) -> Path:
    path = setup.platform.data_dir / "logs" / function / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def records(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines()]


class TestLogs:
    async def test_tail_of_every_source(self, setup: Setup, tmp_path: Path) -> None:
        """The last ``tail`` complete lines of each instance and template log, as NDJSON."""
        deploy(setup, "alpha", tmp_path)
        write_log(setup, "alpha", "template-1.stderr.log", "template ready\n")
        write_log(setup, "alpha", "alpha-1-a.stdout.log", "one\ntwo\nthree\npartial")
        response = await setup.client.get("/api/v1/functions/alpha/logs", params={"tail": 2})
        assert response.headers["content-type"] == "application/x-ndjson"
        assert sorted((r["source"], r["stream"], r["line"]) for r in records(response)) == [
            ("alpha-1-a", "stdout", "three"), ("alpha-1-a", "stdout", "two"),
            ("template-1", "stderr", "template ready")]

    async def test_one_instance(self, setup: Setup, tmp_path: Path) -> None:
        """``instance`` keeps that source only; an unknown one is a 404."""
        deploy(setup, "alpha", tmp_path)
        write_log(setup, "alpha", "alpha-1-a.stdout.log", "a\n")
        write_log(setup, "alpha", "alpha-1-b.stderr.log", "b\n")
        response = await setup.client.get("/api/v1/functions/alpha/logs",
                                          params={"instance": "alpha-1-b"})
        assert records(response) == [{"source": "alpha-1-b", "stream": "stderr", "line": "b"}]
        response = await setup.client.get("/api/v1/functions/alpha/logs",
                                          params={"instance": "alpha-1-z"})
        assert response.status_code == 404

    async def test_unknown_function(self, setup: Setup) -> None:
        """No function and no logs: 404."""
        response = await setup.client.get("/api/v1/functions/nope/logs")
        assert response.status_code == 404

    async def test_follow_sees_new_lines_and_new_instances(self, setup: Setup, tmp_path: Path) -> None:
        """Following yields lines written after the tail, including a new instance's."""
        from torpor.api import logs

        deploy(setup, "alpha", tmp_path)
        folder = logs.log_dir(setup.platform.data_dir, "alpha")
        old = write_log(setup, "alpha", "alpha-1-a.stdout.log", "old\n")
        offsets: dict[Path, int] = {}
        assert [json.loads(r)["line"] for r in logs.snapshot(folder, None, None, 10, offsets)] == ["old"]
        stream = logs.follow(folder, None, offsets, poll_s=0.01)
        with open(old, "a") as handle:
            handle.write("new\nhalf")
        write_log(setup, "alpha", "alpha-1-b.stderr.log", "born\n")
        chunk = await anext(stream)
        lines = sorted(json.loads(r)["line"] for r in chunk.decode().splitlines())
        assert lines == ["born", "new"]
        with open(old, "a") as handle:
            handle.write(" done\n")
        chunk = await anext(stream)
        assert [json.loads(r)["line"] for r in chunk.decode().splitlines()] == ["half done"]
        await stream.aclose()


class TestPage:
    async def test_index_and_assets(self, setup: Setup) -> None:
        """``/ui/`` serves the page; its script, styles and the vendored libraries are served too."""
        page = await setup.client.get("/ui/")
        assert page.status_code == 200 and "torpor console" in page.text
        assert (await setup.client.get("/ui")).headers["location"] == "/ui/"
        for asset in ("console.js", "console.css", "vendor/uplot/uPlot.iife.min.js",
                      "vendor/uplot/uPlot.min.css", "vendor/pico/pico.min.css"):
            response = await setup.client.get(f"/ui/static/{asset}")
            assert response.status_code == 200, asset
            assert f"/ui/static/{asset}" in page.text

    def test_no_remote_assets(self) -> None:
        """Offline: the page and script load nothing from another host."""
        for name in ("index.html", "console.js", "console.css"):
            text = (console.UI_DIR / name).read_text()
            assert "http://" not in text and "https://" not in text, name



class TestPackaging:
    def test_every_asset_is_package_data(self) -> None:
        """``pip install torpor`` ships the whole console: each file under torpor/api/ui matches
        a package-data pattern in pyproject.toml."""
        import fnmatch
        import tomllib

        root = Path(__file__).resolve().parent.parent
        pyproject = tomllib.loads((root / "pyproject.toml").read_text())
        patterns = pyproject["tool"]["setuptools"]["package-data"]["torpor"]
        files = [p.relative_to(root / "torpor").as_posix()
                 for p in (root / "torpor" / "api" / "ui").rglob("*") if p.is_file()]
        assert len(files) >= 9
        unshipped = [f for f in files
                     if not any(fnmatch.fnmatch(f, pattern) and f.count("/") == pattern.count("/")
                                for pattern in patterns)]
        assert unshipped == []
