"""The docs hold up in a fresh clone and match what the code says (issue 16, Docs)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import ROOT

from torpor.address import Address
from torpor.api.metrics import Metrics
from torpor.backends import StartedInstance
from torpor.clock import FakeClock
from torpor.lifecycle.instance import Instance
from torpor.lifecycle.state import InstanceFacts
from torpor.platform import Platform

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_relative_links_resolve_in_a_clone() -> None:
    """Every relative link in README.md and docs/ points at a file the repository tracks."""
    files = tracked()
    broken = []
    for doc in ["README.md", *sorted(f for f in files if f.startswith("docs/") and f.endswith(".md"))]:
        for target in LINK.findall((ROOT / doc).read_text()):
            if "://" in target:
                continue
            resolved = (ROOT / doc).parent.joinpath(target).resolve()
            if not resolved.is_relative_to(ROOT) or str(resolved.relative_to(ROOT)) not in files:
                broken.append(f"{doc}: {target}")
    assert broken == []


def test_readme_documents_make_run_settings_and_limits() -> None:
    """`make run`'s PORT/HOST, the body limits and the error shape are in the README."""
    text = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "HOST ?=" in makefile and "PORT ?=" in makefile
    for needle in ("make run PORT=", "HOST=", "32 MiB", "4 MiB", '"function": "<name or null>"',
                   "so they work offline", "columns are in milliseconds"):
        assert needle in text, needle


def test_cold_start_help_names_every_phase(tmp_path: Path) -> None:
    """The cold-start histogram's HELP lists every phase label it is observed with."""
    (tmp_path / "data").mkdir()
    platform = Platform(tmp_path / "data", clock=FakeClock(0))
    try:
        metrics = Metrics(platform)
        for forked in (False, True):
            started = StartedInstance(address=Address.unix("/tmp/x.sock"), node="n", pool="p",
                                      forked=forked)
            instance = Instance(id="i", function="fn", revision=1, started=started,
                                facts=InstanceFacts(started_at=0, listening_at=0.1, ready_at=0.2),
                                timings={"load_s": 0.01, "setup_s": 0.02, "warmup_s": 0.03})
            metrics.observe_cold_start(instance)
        text = metrics.render().decode()
        (help_line,) = [line for line in text.splitlines()
                        if line.startswith("# HELP torpor_cold_start_seconds ")]
        phases = set(re.findall(r'torpor_cold_start_seconds_count\{function="fn",phase="(\w+)"\}',
                                text))
        assert phases == {"spawn", "fork", "load", "setup", "warmup", "initialize", "total"}
        assert [p for p in phases if p not in help_line] == []
    finally:
        platform.store.close()
