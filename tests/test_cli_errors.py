"""Bad command-line input is one sentence on stderr, never a traceback (issue 16 #11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import torpor_cli


@pytest.mark.parametrize(("args", "expected"), [
    (["serve", "--port", "99999"], "--port must be from 1 to 65535, got 99999"),
    (["serve", "--port", "0"], "--port must be from 1 to 65535, got 0"),
    (["serve", "--log-level", "bogus"], "--log-level must be one of debug, info, warning, error"),
])
def test_serve_arguments(tmp_path: Path, args: list[str], expected: str) -> None:
    """An impossible port or log level is refused before anything starts."""
    result = torpor_cli(*args, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_infinite_timeout_in_spec(tmp_path: Path) -> None:
    """``timeout_s: .inf`` is a sentence naming the field, not a traceback."""
    (tmp_path / "torpor.yaml").write_text("name: fn\nruntime:\n  command: [\"true\"]\ntimeout_s: .inf\n")
    result = torpor_cli("deploy", str(tmp_path), server="http://127.0.0.1:9")
    assert result.returncode == 1
    assert "timeout_s: Input should be a finite number" in result.stderr
    assert "Traceback" not in result.stderr
