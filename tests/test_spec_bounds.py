"""Every number in a spec has a sane bound and a strict type; each error names its field (#16 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from torpor.errors import SpecError
from torpor.spec import load_spec_file, parse_spec

EXTREME = [
    ("timeout_s", 1e308),
    ("initialize_timeout_s", 1e308),
    ("resources.memory_mb", 99_999_999_999),
    ("resources.gpu_memory_mb", 99_999_999_999),
    ("queue.max_queued", 10**12),
    ("queue.timeout_s", float("inf")),
    ("scaling.max_instances", 10**9),
    ("scaling.min_instances", 10**9),
    ("scaling.tick_s", 1e-9),
    ("scaling.scale_to_zero_grace_s", 1e308),
    ("scaling.idle_after_s", 1e308),
    ("scaling.target_concurrency", 1e308),
    ("scaling.max_scale_up_rate", float("inf")),
    ("scaling.activation_scale", 10**9),
    ("scaling.scale_to_zero_pod_retention_s", 1e308),
    ("scaling.target_burst_capacity", 1e308),
    ("scaling.target_burst_capacity", float("inf")),
    ("scaling.keep_alive_s", 1e308),
    ("timeout_s", float("inf")),
    ("timeout_s", float("nan")),
    ("concurrency", True),
    ("concurrency", 2.5),
    ("concurrency", "4"),
    ("timeout_s", "5"),
    ("timeout_s", False),
    ("scaling.idle_mode", "yes"),
]


def with_field(path: str, value: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "fn", "runtime": {"command": ["true"]}}
    *parents, leaf = path.split(".")
    node = spec
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return spec


class TestBounds:
    @pytest.mark.parametrize(("path", "value"), EXTREME)
    def test_refused_naming_the_field(self, tmp_path: Path, path: str, value: Any) -> None:
        """An extreme value or a wrong type is refused with a message that starts with the field."""
        with pytest.raises(SpecError) as info:
            parse_spec(with_field(path, value), source="torpor.yaml", base_dir=tmp_path)
        assert [e.split(":")[0] for e in info.value.errors] == [path]

    @pytest.mark.parametrize(("path", "value"), [
        ("timeout_s", 3600), ("timeout_s", 0.5), ("resources.memory_mb", 65536),
        ("queue.max_queued", 10_000), ("scaling.max_instances", 1000), ("scaling.tick_s", 0.1),
        ("concurrency", 64), ("scaling.idle_mode", True), ("scaling.target_burst_capacity", -1),
        ("scaling.target_burst_capacity", 10_000), ("scaling.scale_to_zero_pod_retention_s", 600)])
    def test_sane_values_accepted(self, tmp_path: Path, path: str, value: Any) -> None:
        """Large but reasonable values (ints for floats too) still pass."""
        parse_spec(with_field(path, value), source="torpor.yaml", base_dir=tmp_path)

    def test_yaml_inf_is_a_spec_error(self, tmp_path: Path) -> None:
        """``timeout_s: .inf`` in torpor.yaml is a SpecError naming the field, not a crash."""
        (tmp_path / "torpor.yaml").write_text(
            "name: fn\nruntime:\n  command: [\"true\"]\ntimeout_s: .inf\n")
        with pytest.raises(SpecError) as info:
            load_spec_file(tmp_path)
        assert info.value.errors == ["timeout_s: Input should be a finite number"]
