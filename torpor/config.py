"""The server config's own sections: declared ``gpus:``, ``limits:``, the ``store:`` URL and the
bounds on HTTP clients (``http:``).

The same file (``--config`` or ``DATA_DIR/config.yaml``) holds ``prices:`` (``torpor.metering.prices``)
and sections of other parts; each part reads its own and leaves the rest alone. Every problem is a
:class:`~torpor.errors.SpecError` naming the file and the field, raised before the server starts.

.. code-block:: yaml

    gpus:                 # declared devices, for machines without NVML and for tests
      - {name: H200, memory_mb: 143360}
      - {name: H200, memory_mb: 143360}
    limits:
      gpus: 30            # all instances together hold at most 30 GPUs (slices counted by memory)
    store: postgresql://torpor@db.internal/torpor   # the shared store; default DATA_DIR/torpor.db
    http:                 # what one client may cost the server (torpor.httpserver.Limits)
      max_header_bytes: 65536
      header_timeout_s: 10
      keep_alive_s: 75
      max_connections: 10000          # default: half the fd limit, at most 10,000
      max_connections_per_client: 2500  # default: a quarter of max_connections
      max_body_bytes: 33554432        # the data plane: /fn/..., /v1/..., /v2/...
      api_max_body_bytes: 4194304     # the control API's JSON bodies (code uploads: 512 MiB)
    isolation:            # when torpor runs as root (docs/isolation.md)
      instance_user: auto # auto: a uid of each function's own; off: root; or a user name or uid
      instance_uids: 2000000-2099999  # the uids auto gives out
    auth:
      enabled: true       # false (or `auth: off`): no API keys, accepted only on a loopback address
      metrics: admin      # who may read /metrics: admin (an admin key), key (any key) or public
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from torpor.backends.local.isolation import parse_uid_range
from torpor.constants import API_MAX_BODY_BYTES, DATA_PLANE_MAX_BODY_BYTES
from torpor.errors import SpecError
from torpor.metering.prices import format_errors
from torpor.safe_yaml import read_config_mapping
from torpor.spec import MIN_GPU_SLICE_MB

MAX_BODY_CEILING = 1 << 40  # 1 TiB: a body bound beyond it is a typo


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuConfig(_Strict):
    """One declared GPU; ``memory_mb`` is required (there is nothing to guess it from)."""

    name: str = Field(default="GPU", min_length=1)
    memory_mb: int = Field(ge=MIN_GPU_SLICE_MB, strict=True)


class LimitsConfig(_Strict):
    gpus: float | None = Field(default=None, gt=0)
    """GPUs all instances may hold at once (seed 001's quota); a slice counts as its share."""


class HttpConfig(_Strict):
    """Bounds on what one client may cost ``torpor serve`` (see :mod:`torpor.httpserver`)."""

    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024, strict=True)
    """Request line and headers; beyond: 431 and the connection closed."""
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600, strict=True)
    """A request's headers not complete this long after it began: 408 and closed."""
    keep_alive_s: float = Field(default=75.0, gt=0, le=86400, strict=True)
    """A kept-alive connection idle this long is closed."""
    max_connections: int | None = Field(default=None, ge=1, le=10_000_000, strict=True)
    """Open client connections in all (None: half the fd limit, at most 10,000)."""
    max_connections_per_client: int | None = Field(default=None, ge=1, le=10_000_000, strict=True)
    """Open connections from one client address (None: a quarter of max_connections)."""
    max_body_bytes: int = Field(default=DATA_PLANE_MAX_BODY_BYTES, ge=1, le=MAX_BODY_CEILING,
                                strict=True)
    """Request bodies on the data plane (/fn/..., /v1/..., /v2/...); beyond: 413."""
    api_max_body_bytes: int = Field(default=API_MAX_BODY_BYTES, ge=1024, le=MAX_BODY_CEILING,
                                    strict=True)
    """Request bodies of the control API's JSON endpoints; beyond: 413 (code uploads have their own
    512 MiB bound)."""
class IsolationConfig(_Strict):
    instance_user: str = Field(default="auto", min_length=1)
    """``auto``: as root, each function runs as a uid of its own from ``instance_uids``;
    ``off``: instances run as the server's user; a user name or uid: every function runs as it."""
    instance_uids: str = "2000000-2099999"

    @field_validator("instance_uids")
    @classmethod
    def _range(cls, value: str) -> str:
        parse_uid_range(value)
        return value

    @property
    def uid_range(self) -> tuple[int, int]:
        return parse_uid_range(self.instance_uids)


class AuthConfig(_Strict):
    enabled: bool = True
    """False: no API keys are asked for (``torpor serve`` accepts it on a loopback address only)."""
    metrics: Literal["admin", "key", "public"] = "admin"
    """Who may read ``/metrics``: an admin key (default), any key, or anyone."""


class ServerConfig(_Strict):
    gpus: tuple[GpuConfig, ...] | None = None  # None: ask NVML; () declares a machine without GPUs
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    store: str | None = Field(default=None, min_length=1)
    """``postgresql://USER@HOST[:PORT]/DATABASE``: the shared store (``--store`` wins over it);
    None: SQLite in DATA_DIR/torpor.db."""
    http: HttpConfig = Field(default_factory=HttpConfig)
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)


_SECTIONS = ("gpus", "limits", "store", "http", "isolation", "auth")


def read_config(path: Path | None) -> dict[str, Any]:
    """The config file's top-level mapping ({} without a file)."""
    if path is None:
        return {}
    return read_config_mapping(path)


def parse_server_config(raw: dict[str, Any], *, source: str = "config") -> ServerConfig:
    """Validate the ``gpus``, ``limits`` and ``http`` sections of an already parsed config mapping."""
    data = {key: raw[key] for key in _SECTIONS if key in raw and raw[key] is not None}
    if isinstance(data.get("auth"), bool):  # `auth: off` / `auth: on` (YAML booleans)
        data["auth"] = {"enabled": data["auth"]}
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc)) from None


def load_server_config(path: Path | None) -> ServerConfig:
    return parse_server_config(read_config(path), source=str(path))
