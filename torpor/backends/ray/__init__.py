"""The Ray backend: torpor instances on the nodes of a Ray cluster, in priority pools.

``RayBackend`` and ``RayConfig`` import Ray on first use (``from torpor.backends.ray import
RayBackend``); the pure submodules (``resources``, ``code``, ``config``) do not. torpor imports this
package only when the Ray backend is chosen (``torpor serve --ray``, or ``backend: ray`` in the
server config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torpor.backends.ray.config import RayConfig, ray_config

if TYPE_CHECKING:
    from torpor.backends.ray.backend import RayBackend

__all__ = ["RayBackend", "RayConfig", "ray_config"]


def __getattr__(name: str) -> Any:
    if name == "RayBackend":
        from torpor.backends.ray import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
