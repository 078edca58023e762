"""Errors torpor raises on purpose, each carrying a sentence a user can act on.

    TorporError
    ├── SpecError             a torpor.yaml (or API body) failed validation; names file and field
    ├── DataDirLocked         another `torpor serve` holds the data directory
    ├── NotFound              a function or instance that does not exist
    ├── BadRequest            an API argument that makes no sense (names the argument)
    ├── Unauthorized          no API key, or one that is unknown or revoked (401)
    ├── Forbidden             a tenant's key where an admin key is needed (403)
    ├── Conflict              a name another tenant's function already has (409)
    ├── QuotaExceeded         a tenant's quota refuses a deploy (403; names quota, current, limit)
    └── GatewayError          a request that cannot be served; carries the HTTP status
        ├── QueueFull         503 + Retry-After: the function's queue is at queue.max_queued
        ├── QueueTimeout      504: waited longer than queue.timeout_s for an instance
        ├── ColdStartFailed   503: the instance could not start; carries its stderr tail
        ├── UpstreamFailed    502: the instance died or broke the connection mid-request
        └── UpstreamTimeout   504: the instance took longer than timeout_s
"""

from __future__ import annotations


class TorporError(Exception):
    """Base of every deliberate torpor error."""


class SpecError(TorporError):
    """A function spec is invalid. ``errors`` holds one ``"field: message"`` line per problem."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: " + "; ".join(errors))


class DataDirLocked(TorporError):
    """Another `torpor serve` is running on the same data directory."""


class NotFound(TorporError):
    """A named function or instance does not exist."""


class BadRequest(TorporError):
    """An API argument is wrong; the message names it."""


class Unauthorized(TorporError):
    """The request has no valid API key (401)."""


class Forbidden(TorporError):
    """The key is valid but may not do this (403)."""


class Conflict(TorporError):
    """The request cannot be done as asked because of something that exists (409)."""


class QuotaExceeded(TorporError):
    """A tenant is at one of its quotas (``max_functions``, ...)."""

    def __init__(self, message: str, *, tenant: str, quota: str, current: float,
                 limit: float) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.quota = quota
        self.current = current
        self.limit = limit


class GatewayError(TorporError):
    """A request the gateway answers itself, with ``status`` and a JSON error body."""

    status = 500
    reason = "internal"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class QueueFull(GatewayError):
    status = 503
    reason = "queue_full"


class QueueTimeout(GatewayError):
    status = 504
    reason = "queue_timeout"


class ColdStartFailed(GatewayError):
    status = 503
    reason = "cold_start_failed"


class UpstreamFailed(GatewayError):
    status = 502
    reason = "instance_failed"


class UpstreamTimeout(GatewayError):
    status = 504
    reason = "function_timeout"
