"""Every YAML torpor reads goes through one bounded loader (issue 16 #8)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import torpor_cli

from torpor.errors import SpecError
from torpor.metering.prices import load_prices
from torpor.safe_yaml import MAX_ALIASES, MAX_YAML_BYTES, YamlTooLarge, load_yaml, read_yaml
from torpor.spec import load_spec_file


def billion_laughs(levels: int = 8) -> str:
    lines = ['a0: &a0 "lol"']
    for n in range(1, levels + 1):
        refs = ", ".join([f"*a{n - 1}"] * 9)
        lines.append(f"a{n}: &a{n} [{refs}]")
    return "\n".join(lines) + "\n"


class TestLoader:
    def test_billion_laughs_refused_at_once(self) -> None:
        """An 8-level bomb (9^8 strings) is refused while parsing, in well under a second."""
        started = time.perf_counter()
        with pytest.raises(YamlTooLarge, match="expand to more than"):
            load_yaml(billion_laughs())
        assert time.perf_counter() - started < 1

    def test_too_many_aliases(self) -> None:
        """More than MAX_ALIASES aliases are refused even when they expand to little."""
        text = "x: &x 1\ny: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n"
        with pytest.raises(YamlTooLarge, match=f"more than {MAX_ALIASES} aliases"):
            load_yaml(text)

    def test_a_few_aliases_are_fine(self) -> None:
        """Ordinary anchors and aliases still work."""
        assert load_yaml("base: &b {cpus: 1}\nother: *b\n") == {"base": {"cpus": 1},
                                                                "other": {"cpus": 1}}

    def test_file_over_the_size_bound_refused_unread(self, tmp_path: Path) -> None:
        """A file over MAX_YAML_BYTES is refused from its size."""
        path = tmp_path / "big.yaml"
        path.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
        with pytest.raises(YamlTooLarge, match="larger than"):
            read_yaml(path)

    def test_deep_nesting_refused(self) -> None:
        """Nesting that would overflow the parser's recursion is a refusal, not a crash."""
        with pytest.raises(YamlTooLarge, match="nested too deeply"):
            load_yaml("[" * 50_000 + "]" * 50_000)

    def test_python_tags_still_refused(self) -> None:
        """The loader stays a safe loader."""
        with pytest.raises(Exception, match="could not determine a constructor"):
            load_yaml("!!python/object/apply:os.system ['true']")


class TestEveryReader:
    def test_spec(self, tmp_path: Path) -> None:
        """torpor.yaml: a SpecError naming the file."""
        (tmp_path / "torpor.yaml").write_text(billion_laughs())
        with pytest.raises(SpecError, match="expand to more than"):
            load_spec_file(tmp_path)

    def test_server_config(self, tmp_path: Path) -> None:
        """The server config (prices)."""
        path = tmp_path / "config.yaml"
        path.write_text(billion_laughs())
        with pytest.raises(SpecError, match="expand to more than"):
            load_prices(path)

    def test_provision_policies_in_the_client(self, tmp_path: Path) -> None:
        """`torpor provision --policies bomb.yaml` refuses it before sending anything."""
        path = tmp_path / "bomb.yaml"
        path.write_text(billion_laughs())
        result = torpor_cli("provision", "fn", "--policies", str(path), server="http://127.0.0.1:9")
        assert result.returncode == 1
        assert "expand to more than" in result.stderr
        assert "cannot reach" not in result.stderr
