"""The Ray backend: torpor instances on the nodes of a Ray cluster, in priority pools.

Importing this package imports Ray; torpor imports it only when the Ray backend is chosen
(``torpor serve --ray``, or ``backend: ray`` in the server config).
"""

from torpor.backends.ray.backend import RayBackend, RayConfig

__all__ = ["RayBackend", "RayConfig"]
