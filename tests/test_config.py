"""The server config's gpus: and limits: sections, validated naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from torpor.config import GpuConfig, HttpConfig, load_server_config
from torpor.errors import SpecError
from torpor.httpserver import Limits, default_max_connections
from torpor.server import http_limits


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


class TestHttp:
    def test_defaults(self) -> None:
        """Without an http: section: 64 KiB headers, 10 s header timeout, 75 s idle, 32 MiB data
        plane bodies, 4 MiB control API bodies; the caps follow the fd limit."""
        config = load_server_config(None).http
        assert config == HttpConfig(max_header_bytes=65536, header_timeout_s=10.0, keep_alive_s=75.0,
                                    max_connections=None, max_connections_per_client=None,
                                    max_body_bytes=32 * 1024 * 1024, api_max_body_bytes=4 * 1024 * 1024)
        assert http_limits(config, fd_limit=1024) == Limits(
            max_header_bytes=65536, header_timeout_s=10.0, keep_alive_s=75.0, max_connections=512,
            max_connections_per_client=128)
        assert [default_max_connections(n) for n in (100, 1024, 20000, 1 << 20)] == [64, 512, 10000, 10000]

    def test_set_values(self, tmp_path: Path) -> None:
        """Every field is read; the per-client cap defaults to a quarter of the total."""
        path = tmp_path / "config.yaml"
        path.write_text("http:\n  max_header_bytes: 8192\n  header_timeout_s: 2.5\n  keep_alive_s: 5\n"
                        "  max_connections: 300\n  max_body_bytes: 1000\n  api_max_body_bytes: 2048\n",
                        encoding="utf-8")
        config = load_server_config(path).http
        assert (config.max_body_bytes, config.api_max_body_bytes) == (1000, 2048)
        assert http_limits(config, fd_limit=20000) == Limits(
            max_header_bytes=8192, header_timeout_s=2.5, keep_alive_s=5.0, max_connections=300,
            max_connections_per_client=75)

    def test_more_connections_than_fds_is_refused(self) -> None:
        """A total cap the fd limit cannot hold stops the server before it listens."""
        with pytest.raises(SpecError) as excinfo:
            http_limits(HttpConfig(max_connections=5000), fd_limit=1024, source="config.yaml")
        assert excinfo.value.errors == [
            "http.max_connections: 5000 needs more file descriptors than this process may open "
            "(1024 (RLIMIT_NOFILE) less 256 for instances and the store); lower it to at most 768 "
            "or raise the hard limit (ulimit -Hn)"]

    @pytest.mark.parametrize(("text", "error"), [
        ("http: {max_header_bytes: 100}\n",
         "http.max_header_bytes: Input should be greater than or equal to 1024"),
        ("http: {max_header_bytes: 64 KiB}\n", "http.max_header_bytes: Input should be a valid integer"),
        ("http: {header_timeout_s: 0}\n", "http.header_timeout_s: Input should be greater than 0"),
        ("http: {header_timeout_s: yes}\n", "http.header_timeout_s: Input should be a valid number"),
        ("http: {keep_alive_s: .inf}\n",
         "http.keep_alive_s: Input should be less than or equal to 86400"),
        ("http: {max_connections: 0}\n", "http.max_connections: Input should be greater than or equal to 1"),
        ("http: {max_connections_per_client: 1.5}\n",
         "http.max_connections_per_client: Input should be a valid integer"),
        ("http: {max_body_bytes: 0}\n", "http.max_body_bytes: Input should be greater than or equal to 1"),
        ("http: {api_max_body_bytes: 10}\n",
         "http.api_max_body_bytes: Input should be greater than or equal to 1024"),
        ("http: {max_conections: 10}\n", "http.max_conections: unknown field"),
        ("http: 5\n", "http: Input should be a valid dictionary or instance of HttpConfig"),
    ])
    def test_bad_http_config(self, tmp_path: Path, text: str, error: str) -> None:
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
