"""The server config's gpus: and limits: sections, validated naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from torpor.config import GpuConfig, load_server_config
from torpor.errors import SpecError


def config_errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as excinfo:
        load_server_config(path)
    return excinfo.value.errors


class TestGpus:
    def test_declared_gpus(self, tmp_path: Path) -> None:
        """Declared GPUs are read in order; other sections are left to their owners."""
        path = tmp_path / "config.yaml"
        path.write_text("prices: {rounding: minute}\ngpus:\n  - {name: H200, memory_mb: 143360}\n"
                        "  - {memory_mb: 16384}\nlimits: {gpus: 1.5}\n", encoding="utf-8")
        config = load_server_config(path)
        assert config.gpus == (GpuConfig(name="H200", memory_mb=143360),
                               GpuConfig(name="GPU", memory_mb=16384))
        assert config.limits.gpus == 1.5

    def test_no_file_means_nvml_and_no_quota(self) -> None:
        """Without a config, GPUs come from NVML and nothing caps them."""
        config = load_server_config(None)
        assert (config.gpus, config.limits.gpus) == (None, None)

    @pytest.mark.parametrize(("text", "error"), [
        ("gpus:\n  - {name: H200}\n", "gpus.0.memory_mb: Field required"),
        ("gpus:\n  - {memory_mb: -5}\n", "gpus.0.memory_mb: Input should be greater than or equal "
                                         "to 1024"),
        ("gpus:\n  - {memory_mb: 16384.5}\n", "gpus.0.memory_mb: Input should be a valid integer"),
        ("gpus:\n  - {memory_mb: 16384, cores: 2}\n", "gpus.0.cores: unknown field"),
        ("limits: {gpus: 0}\n", "limits.gpus: Input should be greater than 0"),
        ("limits: {cpus: 3}\n", "limits.cpus: unknown field"),
    ])
    def test_bad_config(self, tmp_path: Path, text: str, error: str) -> None:
        """Each bad value is refused naming its field."""
        assert config_errors(tmp_path, text) == [error]


class TestStore:
    def test_the_store_url(self, tmp_path: Path) -> None:
        """``store:`` holds the shared store's URL; without it, None (SQLite in the data dir)."""
        path = tmp_path / "config.yaml"
        path.write_text("store: postgresql://torpor@db.internal/torpor\n", encoding="utf-8")
        assert load_server_config(path).store == "postgresql://torpor@db.internal/torpor"
        assert load_server_config(None).store is None

    @pytest.mark.parametrize(("text", "error"), [
        ("store: 5432\n", "store: Input should be a valid string"),
        ("store: ''\n", "store: String should have at least 1 character"),
    ])
    def test_bad_store(self, tmp_path: Path, text: str, error: str) -> None:
        assert config_errors(tmp_path, text) == [error]
