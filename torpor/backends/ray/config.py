"""Which backend the server runs, from ``--ray ADDRESS`` and the server config file; no Ray import.

Server config (``--config`` or ``DATA_DIR/config.yaml``)::

    backend: ray             # or local (the default)
    ray_address: auto        # or a GCS address host:port; --ray ADDRESS overrides it
    ray_node_root: /tmp/torpor-ray   # on each node: code cache, logs, sockets (<root>/<node id>)
    pools:
      - {name: onprem, priority: 10}
      - {name: cloud, priority: 1, elastic: true}

Every error names its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torpor.placement.pools import DEFAULT_POOLS, Pool, PoolConfigError, parse_pools

BACKENDS = ("local", "ray")
DEFAULT_GPU_MEMORY_MB = 81920  # one 80 GB GPU: what a gpu_memory_mb slice is a fraction of
_ADDRESS = re.compile(r"^(auto|[A-Za-z0-9.\-\[\]:]+:\d{1,5})$")


class BackendConfigError(ValueError):
    """``backend``, ``ray_address`` or ``pools`` in the server config is invalid (names the field)."""


@dataclass(frozen=True)
class RayConfig:
    address: str = "auto"  # ``auto`` or a GCS address ``host:port``
    pools: tuple[Pool, ...] = DEFAULT_POOLS
    namespace: str = "torpor"
    node_root: str = "/tmp/torpor-ray"  # each node's code cache, logs and sockets: <root>/<node id>
    gpu_memory_mb_per_gpu: int = DEFAULT_GPU_MEMORY_MB
    # ask Ray for memory_mb too (off for Ray's fake autoscaler, whose node types cannot declare it)
    ask_memory: bool = True
    try_s: float = 2.0  # how long a pool that seemed to have room gets before the next is tried
    wait_s: float = 600.0  # how long an instance waits on the elastic (or last) pool for a node
    poll_s: float = 1.0  # node list and agent pings
    node_lost_after_s: float = 5.0  # an agent silent this long has lost its node
    # an elastic node's agent is stopped once the node has had no instance for this long: Ray
    # counts a node with an actor as busy, and would never release it
    elastic_linger_s: float = 2.0
    freezer: str = "auto"


def ray_config(raw: Mapping[str, Any] | None, cli_address: str | None = None) -> RayConfig | None:
    """The Ray backend's config when ``--ray`` is given or the config says ``backend: ray``;
    None for the local backend (which then never imports Ray)."""
    raw = raw or {}
    backend = raw.get("backend", "local")
    if backend not in BACKENDS:
        raise BackendConfigError(f"backend: must be one of {', '.join(BACKENDS)} (got {backend!r})")
    if cli_address is None and backend != "ray":
        return None
    address = cli_address if cli_address is not None else raw.get("ray_address", "auto")
    field = "--ray" if cli_address is not None else "ray_address"
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise BackendConfigError(f"{field}: must be 'auto' or a Ray GCS address host:port "
                                 f"(got {address!r})")
    try:
        pools = parse_pools(raw.get("pools"))
    except PoolConfigError as exc:
        raise BackendConfigError(str(exc)) from None
    node_root = raw.get("ray_node_root", RayConfig.node_root)
    if not isinstance(node_root, str) or not node_root.startswith("/"):
        raise BackendConfigError(f"ray_node_root: must be an absolute path (got {node_root!r})")
    return RayConfig(address=address, pools=pools, node_root=node_root)
