"""Test function: allocates payload["mb"] MB in predict(), and $SETUP_MB MB in setup() (every page
touched, so the memory is really used)."""

from __future__ import annotations

import os
from typing import Any

import torpor


def allocate(mb: int) -> bytearray:
    size = mb * 1024 * 1024
    block = bytearray(size)
    for offset in range(0, size, 4096):
        block[offset] = 1
    return block


class Hog(torpor.Model):
    def setup(self) -> None:
        self.kept = allocate(int(os.environ.get("SETUP_MB", "0")))

    def predict(self, payload: Any) -> dict[str, Any]:
        block = allocate(int((payload or {}).get("mb", 0)))
        return {"allocated_mb": len(block) // (1024 * 1024)}
