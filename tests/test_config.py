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


class TestAuth:
    def test_default_on_metrics_admin(self) -> None:
        """Without a config, API keys are asked for and /metrics needs an admin key."""
        auth = load_server_config(None).auth
        assert (auth.enabled, auth.metrics) == (True, "admin")

    @pytest.mark.parametrize(("text", "enabled", "metrics"), [
        ("auth: off\n", False, "admin"),
        ("auth: on\n", True, "admin"),
        ("auth: {enabled: false, metrics: public}\n", False, "public"),
        ("auth: {metrics: key}\n", True, "key"),
    ])
    def test_forms(self, tmp_path: Path, text: str, enabled: bool, metrics: str) -> None:
        path = tmp_path / "config.yaml"
        path.write_text(text, encoding="utf-8")
        auth = load_server_config(path).auth
        assert (auth.enabled, auth.metrics) == (enabled, metrics)

    def test_unknown_metrics_mode(self, tmp_path: Path) -> None:
        assert config_errors(tmp_path, "auth: {metrics: everyone}\n") == [
            "auth.metrics: Input should be 'admin', 'key' or 'public'"]
