"""The control API under /api/v1 (FastAPI, with an OpenAPI description)."""
