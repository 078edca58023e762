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
    isolation:            # when torpor runs as root (docs/isolation.md)
      instance_user: auto # auto: a uid of each function's own; off: root; or a user name or uid
      instance_uids: 2000000-2099999  # the uids auto gives out
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from torpor.backends.local.isolation import parse_uid_range
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


class ServerConfig(_Strict):
    gpus: tuple[GpuConfig, ...] | None = None  # None: ask NVML; () declares a machine without GPUs
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)


_SECTIONS = ("gpus", "limits", "isolation")


def read_config(path: Path | None) -> dict[str, Any]:
    """The config file's top-level mapping ({} without a file)."""
    if path is None:
        return {}
    return read_config_mapping(path)


def parse_server_config(raw: dict[str, Any], *, source: str = "config") -> ServerConfig:
    """Validate the ``gpus`` and ``limits`` sections of an already parsed config mapping."""
    data = {key: raw[key] for key in _SECTIONS if key in raw and raw[key] is not None}
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, format_errors(exc)) from None


def load_server_config(path: Path | None) -> ServerConfig:
    return parse_server_config(read_config(path), source=str(path))
