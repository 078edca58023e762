"""Templates of idle functions are retired, and what templates hold is measured.

A template (and the spare it forks ahead of time) holds the function's imports and weights in memory
so a cold start only forks. For a function at zero instances that nobody calls, that memory is held
for nothing (the embeddings example: about 280 MB + 230 MB). After ``templates.retire_idle_s`` (server
config; default :data:`DEFAULT_RETIRE_IDLE_S`, 0 = never) without a live instance or a request, the
reconciler retires the template; the next cold start rebuilds it (that one start pays for the import
and ``load()`` again). ``torpor get`` says when a template was retired; ``/metrics`` reports the
memory each template holds (``torpor_template_memory_bytes``, measured by the backend).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torpor.errors import SpecError
from torpor.safe_yaml import read_yaml

DEFAULT_RETIRE_IDLE_S = 600.0
TEMPLATES_SECTION = "templates"


class TemplateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
    retire_idle_s: float = Field(default=DEFAULT_RETIRE_IDLE_S, ge=0, le=30 * 86_400)


def load_template_settings(path: Path | None) -> TemplateSettings:
    """The ``templates:`` section of the server config (defaults without one)."""
    if path is None or not path.is_file():
        return TemplateSettings()
    try:
        raw = read_yaml(path)
    except Exception as exc:  # load_prices has already reported what is wrong with the file
        raise SpecError(str(path), [f"cannot read: {exc}"]) from None
    section = raw.get(TEMPLATES_SECTION) if isinstance(raw, dict) else None
    if section is None:
        return TemplateSettings()
    if not isinstance(section, dict):
        raise SpecError(str(path), [f"{TEMPLATES_SECTION}: must be a mapping of fields"])
    try:
        return TemplateSettings.model_validate(section)
    except ValidationError as exc:
        errors = [f"{TEMPLATES_SECTION}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                  for e in exc.errors()]
        raise SpecError(str(path), errors) from None


def should_retire(*, live_instances: int, queued: int, last_used_at: float, now: float,
                  retire_idle_s: float) -> bool:
    """Pure: retire when nothing runs or waits and nothing has used the function for
    ``retire_idle_s`` (0 turns retiring off)."""
    if retire_idle_s <= 0 or live_instances > 0 or queued > 0:
        return False
    return now - last_used_at >= retire_idle_s
