"""`torpor simulate` as a user runs it: a table, one JSON object per run, clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import torpor_cli

pytestmark = pytest.mark.timeout(60)

TRACE = "timestamp_s,function,duration_ms\n0,echo,1000\n0.2,echo,1000\n30,echo,500\n"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    spec = tmp_path / "torpor.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "echo", "runtime": {"handler": "model:Echo"},  # the module need not exist here
        "resources": {"gpu_memory_mb": 4096},
        "scaling": {"target_utilization": 1.0, "stable_window_s": 6, "tick_s": 1,
                    "scale_to_zero_grace_s": 0},
    }))
    return trace, spec


def test_json_one_object_per_run(files: tuple[Path, Path]) -> None:
    """--compare of two values: two JSON lines with the fields the issue names."""
    trace, spec = files
    result = torpor_cli("simulate", "--trace", str(trace), "--spec", str(spec), "--json",
                        "--compare", "scaling.provisioned=0,1", "--cold-start-s", "0.5")
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["run"] for r in runs] == ["scaling.provisioned=0", "scaling.provisioned=1"]
    for run in runs:
        assert run["requests"] == 3
        assert set(run["latency_s"]) == {"p50", "p90", "p99"}
        assert {"cold_starts", "instance_seconds", "state_seconds", "cost", "always_on_cost"} <= set(run)
        assert run["timings"]["cold_start_s"] == 0.5
    on_demand, provisioned = runs
    # on demand: instances for the requests at 0 and 0.2 s, and again at 30 s (gone by then);
    # provisioned 1: the first instance is kept and serves the request at 30 s warm
    assert (on_demand["cold_starts"], provisioned["cold_starts"]) == (3, 2)
    assert on_demand["latency_s"]["p99"] == pytest.approx(1.5003)


def test_table(files: tuple[Path, Path]) -> None:
    """Without --json: the trace, the timings and one column per run."""
    trace, spec = files
    result = torpor_cli("simulate", "--trace", str(trace), "--spec", str(spec),
                        "--set", "scaling.idle_mode=true")
    assert result.returncode == 0, result.stderr
    assert "3 requests, 1 function(s)" in result.stdout
    assert "scaling.idle_mode=true" not in result.stdout.splitlines()[2]  # --set is no what-if
    assert "instance-seconds" in result.stdout and "always-on cost" in result.stdout


def test_errors_are_one_sentence(files: tuple[Path, Path], tmp_path: Path) -> None:
    """A bad --set field and an unreadable trace: exit 1, one line, no traceback."""
    trace, spec = files
    bad = torpor_cli("simulate", "--trace", str(trace), "--spec", str(spec),
                     "--set", "scaling.colour=blue")
    assert bad.returncode == 1
    assert "scaling.colour: unknown field" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "odd.csv").write_text("a,b\n1,2\n")
    odd = torpor_cli("simulate", "--trace", str(tmp_path / "odd.csv"), "--spec", str(spec))
    assert odd.returncode == 1
    assert "cannot tell the trace format" in odd.stderr and "Traceback" not in odd.stderr


def test_plot_writes_a_png(files: tuple[Path, Path], tmp_path: Path) -> None:
    """--plot (matplotlib, the `plot` extra) writes a PNG; skipped where matplotlib is not installed."""
    pytest.importorskip("matplotlib")
    trace, spec = files
    out = tmp_path / "sim.png"
    result = torpor_cli("simulate", "--trace", str(trace), "--spec", str(spec), "--plot", str(out),
                        "--compare", "scaling.idle_mode=false,true", "--set", "scaling.provisioned=1")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
