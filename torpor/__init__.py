"""torpor: a self-hosted serverless inference platform for GPU and CPU models."""

from __future__ import annotations

from torpor.sdk import Model, Response, request_id

__version__ = "0.1.0"
__all__ = ["Model", "Response", "__version__", "request_id"]
