"""``POST /initialize``: the warm-up that ends a cold start (seed 000), over the instance's client.

It runs above the backend seam, the same for every backend: the backend returns once the instance
listens, the reconciler calls this, and only then is the instance READY.
"""

from __future__ import annotations

import json

from torpor.backends import StartFailed
from torpor.gateway.route import InstanceClient
from torpor.gateway.upstream import ConnectFailed

# a command function without /initialize: 404, 405, or 501 as Python's http.server answers for a
# method it lacks (issue 16 #13)
NO_HOOK_STATUSES = frozenset({404, 405, 501})


async def initialize(client: InstanceClient, *, command: bool, timeout_s: float) -> dict[str, float]:
    """Call ``/initialize``; a command function that does not serve it is fine.

    Returns the timings a torpor runtime reports (load_s, setup_s, warmup_s).
    """
    try:
        status, body = await client.control("/initialize", timeout_s)
    except TimeoutError:
        raise StartFailed(
            f"/initialize did not finish within initialize_timeout_s={timeout_s:g}s"
        ) from None
    except ConnectFailed as exc:
        raise StartFailed(f"/initialize failed: {exc}") from None
    if command and status in NO_HOOK_STATUSES:
        return {}
    if 200 <= status < 300:
        return _timings(body) if not command else {}
    raise StartFailed(f"/initialize answered {status}: {body[:2000]}")


def _timings(body: str) -> dict[str, float]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if k.endswith("_s") and isinstance(v, int | float)}
