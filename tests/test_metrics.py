"""``/metrics``: every series torpor exports, promtool's linter, usage counters, and the Grafana
dashboard in docs/ (every query must use a metric torpor exports)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from torpor.backends import CodeRef
from torpor.backends.local.nvml import FakeGpuSource
from torpor.clock import FakeClock
from torpor.lifecycle.instance import Instance
from torpor.lifecycle.state import InstanceFacts
from torpor.metering.ledger import ledger_row
from torpor.metering.prices import PriceTable
from torpor.metering.usage import UsageMeter
from torpor.placement.gpus import Placement
from torpor.platform import Platform
from torpor.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
T0 = 1_800_000_000.0


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """A GPU function with a ready instance that cold-started, thawed, and served traffic."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "config.yaml").write_text("gpus:\n  - {name: T4, memory_mb: 16384}\n")
    clock = FakeClock(T0)
    gpus = FakeGpuSource()
    gpus.set(0, 40.0, 5000)
    gpus.set_instance("sd-1-a", 40.0, 3000)
    platform = Platform(tmp_path / "data", clock=clock, gpu_source=gpus)
    spec = parse_spec({"name": "sd", "runtime": {"command": ["true"]},
                       "resources": {"gpu_memory_mb": 4096}}, source="t", base_dir=tmp_path)
    fn = platform.reconciler.apply(spec, 1, CodeRef("0" * 64, tmp_path), "t", T0, T0)
    instance = Instance(id="sd-1-a", function="sd", revision=1,
                        facts=InstanceFacts(started_at=T0, listening_at=T0 + 0.2, ready_at=T0 + 0.3),
                        placement=Placement("local", (0,), 4096))
    fn.instances[instance.id] = instance
    platform.reconciler.placements[instance.id] = Placement("local", (0,), 4096)
    platform.metrics.usage.transition(ledger_row(instance.ledger_record(spec)), "ready", T0)
    platform.metrics.observe_cold_start(instance)
    platform.metrics.observe_thaw(instance, 0.004)
    requests = platform.metrics.requests
    requests.observe("sd", "cold", 200, 0.35, b"r1", b"sd-1-a")
    requests.observe("sd", "warm", 200, 0.01, b"r2", b"sd-1-a")
    requests.observe("sd", "none", 503, 0.0, b"r3", b"")
    fn.route.queue_wait.observe(0.3)
    clock.advance(10)
    yield platform
    platform.store.close()


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


class TestSeries:
    def test_every_series_is_exported(self, platform: Platform) -> None:
        """Latency by start, responses by code, queue, instances, scaling, cold start, thaw, usage."""
        text = platform.metrics.render().decode()
        names = sample_names(text)
        for name in ("torpor_requests_total", "torpor_responses_total",
                     "torpor_request_duration_seconds_bucket", "torpor_queued_requests",
                     "torpor_queue_wait_seconds_bucket", "torpor_in_flight_requests",
                     "torpor_instances", "torpor_desired_instances", "torpor_ready_instances",
                     "torpor_provisioned_target", "torpor_panic_mode",
                     "torpor_cold_start_seconds_bucket", "torpor_thaw_seconds_bucket",
                     "torpor_billed_seconds_total", "torpor_cost_total",
                     "torpor_gpu_memory_reserved_bytes"):
            assert name in names, name
        assert 'torpor_request_duration_seconds_count{function="sd",start="cold"} 1.0' in text
        assert 'torpor_request_duration_seconds_bucket{function="sd",le="0.5",start="cold"} 1.0' in text
        assert 'torpor_responses_total{code="503",function="sd"} 1.0' in text
        assert 'torpor_queue_wait_seconds_count{function="sd"} 1.0' in text
        assert 'torpor_instances{function="sd",state="ready"} 1.0' in text
        assert 'torpor_ready_instances{function="sd"} 1.0' in text
        assert 'torpor_cold_start_seconds_count{function="sd",phase="initialize"} 1.0' in text
        assert 'torpor_cold_start_seconds_count{function="sd",phase="spawn"} 1.0' in text
        assert 'torpor_thaw_seconds_count{function="sd"} 1.0' in text
        assert 'torpor_billed_seconds_total{function="sd",state="ready"} 10.0' in text
        assert 'torpor_gpu_memory_reserved_bytes{function="sd"} 4.294967296e+09' in text

    @pytest.mark.skipif(shutil.which("promtool") is None,
                        reason="promtool missing: `make test` installs Debian's prometheus package")
    def test_promtool_reports_nothing(self, platform: Platform) -> None:
        """``promtool check metrics`` accepts the exposition without a single lint remark."""
        result = subprocess.run(["promtool", "check", "metrics"], input=platform.metrics.render(),
                                capture_output=True, timeout=30)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


class TestUsageMeter:
    def test_seconds_and_cost_by_state(self) -> None:
        """Closed and open intervals, by function and state, priced like the bill."""
        meter = UsageMeter(PriceTable())  # 1 vCPU × 0.00002 + 1 GB × 0.000003 a second when active
        info = {"instance_id": "i", "function": "f", "revision": 1, "pool": "local", "device": "cpu",
                "gpu_memory_mb": 0, "cpus": 1.0, "memory_mb": 1024}
        meter.transition(info, "starting", 100.0)
        meter.transition(info, "ready", 102.0)
        meter.transition(info, "frozen", 112.0)
        totals = meter.totals(now=122.0)
        assert totals[("f", "starting")] == (2.0, Decimal("0.000046"))
        assert totals[("f", "ready")] == (10.0, Decimal("0.00023"))
        assert totals[("f", "frozen")] == (10.0, Decimal("0.00003"))  # idle: memory only
        meter.transition(info, None, 130.0)
        assert meter.totals(now=500.0)[("f", "frozen")] == (18.0, Decimal("0.000054"))


_PROMQL_WORDS = {"sum", "rate", "irate", "increase", "by", "without", "histogram_quantile", "max",
                 "min", "avg", "count", "le", "on", "ignoring", "group_left", "clamp_min", "topk",
                 "function", "state", "start", "code", "phase", "currency", "or", "and", "unless",
                 "bool", "offset", "label_replace", "vector", "time", "deriv", "delta", "abs"}


def dashboard_metrics() -> set[str]:
    """Every metric name in every target expression of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r'"[^"]*"', "", target["expr"])  # label values are not metrics
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # nor range durations
            for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
                if word not in _PROMQL_WORDS and not word.startswith("$"):
                    names.add(word)
    return names


class TestGrafanaDashboard:
    def test_every_query_uses_an_exported_metric(self, platform: Platform) -> None:
        """No panel queries a series torpor does not export (names taken from a real scrape: its
        samples, and its families, some of which have no sample yet, e.g. no template running)."""
        text = platform.metrics.render().decode()
        exported = sample_names(text) | set(families(text))
        used = dashboard_metrics()
        assert used, "the dashboard has no queries"
        assert used <= exported, sorted(used - exported)

    def test_every_exported_family_is_on_the_dashboard(self, platform: Platform) -> None:
        """Every torpor_* family appears in at least one panel (``*_created`` are timestamps)."""
        exported = {name for name in families(platform.metrics.render().decode())
                    if name.startswith("torpor_") and not name.endswith("_created")}
        used = dashboard_metrics()
        missing = {name for name in exported
                   if not any(u == name or u.startswith(name + "_") for u in used)}
        assert missing == set()
