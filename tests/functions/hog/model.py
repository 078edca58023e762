"""Test function: allocates payload["mb"] MB (and touches every page) in predict()."""

from __future__ import annotations

from typing import Any

import torpor


class Hog(torpor.Model):
    def predict(self, payload: Any) -> dict[str, Any]:
        size = int((payload or {}).get("mb", 0)) * 1024 * 1024
        block = bytearray(size)
        for offset in range(0, size, 4096):
            block[offset] = 1
        return {"allocated_mb": size // (1024 * 1024)}
