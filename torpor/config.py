"""The server config's resource sections: declared ``gpus:`` and ``limits:``.

The same file (``--config`` or ``DATA_DIR/config.yaml``) holds ``prices:`` (``torpor.metering.prices``)
and sections of other parts; each part reads its own and leaves the rest alone. Every problem is a
:class:`~torpor.errors.SpecError` naming the file and the field, raised before the server starts.

.. code-block:: yaml

    gpus:                 # declared devices, for machines without NVML and for tests
      - {name: H200, memory_mb: 143360}
      - {name: H200, memory_mb: 143360}
    limits:
      gpus: 30            # all instances together hold at most 30 GPUs (slices counted by memory)
    auth:
      enabled: true       # false (or `auth: off`): no API keys, accepted only on a loopback address
      metrics: admin      # who may read /metrics: admin (an admin key), key (any key) or public
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torpor.errors import SpecError
from torpor.metering.prices import format_errors
from torpor.safe_yaml import read_config_mapping
from torpor.spec import MIN_GPU_SLICE_MB


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuConfig(_Strict):
    """One declared GPU; ``memory_mb`` is required (there is nothing to guess it from)."""

    name: str = Field(default="GPU", min_length=1)
    memory_mb: int = Field(ge=MIN_GPU_SLICE_MB, strict=True)


class LimitsConfig(_Strict):
    gpus: float | None = Field(default=None, gt=0)
    """GPUs all instances may hold at once (seed 001's quota); a slice counts as its share."""


class AuthConfig(_Strict):
    enabled: bool = True
    """False: no API keys are asked for (``torpor serve`` accepts it on a loopback address only)."""
    metrics: Literal["admin", "key", "public"] = "admin"
    """Who may read ``/metrics``: an admin key (default), any key, or anyone."""


class ServerConfig(_Strict):
    gpus: tuple[GpuConfig, ...] | None = None  # None: ask NVML; () declares a machine without GPUs
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)


_SECTIONS = ("gpus", "limits", "auth")


def read_config(path: Path | None) -> dict[str, Any]:
    """The config file's top-level mapping ({} without a file)."""
    if path is None:
        return {}
    return read_config_mapping(path)


def parse_server_config(raw: dict[str, Any], *, source: str = "config") -> ServerConfig:
    """Validate the ``gpus`` and ``limits`` sections of an already parsed config mapping."""
    data = {key: raw[key] for key in _SECTIONS if key in raw and raw[key] is not None}
    if isinstance(data.get("auth"), bool):  # `auth: off` / `auth: on` (YAML booleans)
        data["auth"] = {"enabled": data["auth"]}
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc)) from None


def load_server_config(path: Path | None) -> ServerConfig:
    return parse_server_config(read_config(path), source=str(path))
