"""Templates of idle functions are retired and rebuilt on demand; their memory is reported (#16 16)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES

from torpor.backends.local.memory import process_memory_bytes
from torpor.errors import SpecError
from torpor.lifecycle.template_idle import (
    DEFAULT_RETIRE_IDLE_S,
    load_template_settings,
    should_retire,
)


class TestShouldRetire:
    def test_timeline(self) -> None:
        """Idle for retire_idle_s with nothing live or queued: retired; not a second earlier."""
        idle = {"live_instances": 0, "queued": 0, "last_used_at": 100.0, "retire_idle_s": 600.0}
        assert not should_retire(now=699.0, **idle)  # type: ignore[arg-type]
        assert should_retire(now=700.0, **idle)  # type: ignore[arg-type]

    @pytest.mark.parametrize("busy", [{"live_instances": 1}, {"queued": 1}, {"retire_idle_s": 0.0}])
    def test_kept(self, busy: dict[str, Any]) -> None:
        """A live instance, a waiting request, or retire_idle_s 0 keeps the template."""
        args = {"live_instances": 0, "queued": 0, "last_used_at": 0.0, "retire_idle_s": 10.0,
                **busy}
        assert not should_retire(now=1e6, **args)


class TestSettings:
    def test_default_without_config(self, tmp_path: Path) -> None:
        """No config or no section: the default."""
        assert load_template_settings(None).retire_idle_s == DEFAULT_RETIRE_IDLE_S
        (tmp_path / "c.yaml").write_text("prices: {}\n")
        assert load_template_settings(tmp_path / "c.yaml").retire_idle_s == DEFAULT_RETIRE_IDLE_S

    def test_section_read(self, tmp_path: Path) -> None:
        """``templates.retire_idle_s`` sets it."""
        (tmp_path / "c.yaml").write_text("templates:\n  retire_idle_s: 120\n")
        assert load_template_settings(tmp_path / "c.yaml").retire_idle_s == 120

    def test_bad_value_names_the_field(self, tmp_path: Path) -> None:
        """A bad value is a SpecError naming templates.retire_idle_s."""
        (tmp_path / "c.yaml").write_text("templates:\n  retire_idle_s: -1\n")
        with pytest.raises(SpecError, match=r"templates\.retire_idle_s"):
            load_template_settings(tmp_path / "c.yaml")


def test_memory_of_this_process() -> None:
    """The measure is the process's memory: more than a megabyte for a Python process."""
    assert process_memory_bytes(os.getpid()) > 2**20


def test_idle_template_retired_then_rebuilt(make_server: Any, tmp_path: Path) -> None:
    """A function with no instance and no request loses its template after retire_idle_s; `get`
    says so, /metrics stops counting its memory, and the next request rebuilds it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "config.yaml").write_text("templates:\n  retire_idle_s: 1.5\n")
    srv = make_server([EXAMPLES / "echo"], data_dir=data_dir)
    if not srv.http.get("/healthz").json()["templates"]:
        pytest.skip("templates (fork) are not available here")
    pattern = re.compile(r'^torpor_template_memory_bytes\{function="echo"\} (\S+)$', re.M)
    srv.wait_for(lambda: pattern.search(srv.http.get("/metrics").text), what="template memory")
    assert float(pattern.search(srv.http.get("/metrics").text)[1]) > 2**20  # type: ignore[index]
    template = srv.wait_for(lambda: (srv.function("echo")["template"] or {}).get("state") == "retired"
                            and srv.function("echo")["template"], what="template retired")
    assert "rebuilds it" in template["reason"]
    assert pattern.search(srv.http.get("/metrics").text) is None
    assert srv.invoke("echo", {"x": 1}).json()["echo"] == {"x": 1}
    assert srv.function("echo")["template"]["state"] == "ready"
