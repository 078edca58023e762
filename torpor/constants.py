"""Tunables of the server itself (per-function knobs live in the spec)."""

from __future__ import annotations

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DATA_DIR = ".torpor"
DEFAULT_SERVER = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

RECONCILE_INTERVAL_S = 0.5  # the reconciler also wakes at once when poked
BACKOFF_BASE_S = 1.0  # first retry after a failed cold start
BACKOFF_MAX_S = 30.0
STOP_GRACE_S = 5.0  # SIGTERM → SIGKILL
DRAIN_POLL_S = 0.02
HEARTBEAT_S = 1.0  # how often the server records that it is alive (ledger crash recovery)
DATA_PLANE_MAX_BODY_BYTES = 32 * 1024 * 1024  # /fn, /v1, /v2 request bodies (the http.max_body_bytes default)
API_MAX_BODY_BYTES = 4 * 1024 * 1024  # control API request bodies (specs, provisioning configs)
