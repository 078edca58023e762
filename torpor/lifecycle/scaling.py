"""How many instances a function needs now: a pure rule the reconciler applies every pass."""

from __future__ import annotations

import math

from torpor.spec import FunctionSpec


def desired_instances(
    spec: FunctionSpec, *, in_system: int, last_request_at: float | None, live: int, now: float
) -> int:
    """Enough instances for the requests in the system, kept while traffic is recent.

    needed = ceil(in_system / concurrency); while the last request is younger than the
    scale-to-zero grace period the live count is kept, after it the count falls to min_instances.
    """
    scaling = spec.scaling
    needed = math.ceil(in_system / spec.concurrency)
    recent = last_request_at is not None and now - last_request_at < scaling.scale_to_zero_grace_s
    desired = max(needed, scaling.min_instances, live if recent else 0)
    return min(desired, scaling.max_instances)
