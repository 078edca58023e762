"""Test function: with FAIL_HALF=1 every other request fails (500); otherwise all succeed."""

from __future__ import annotations

import itertools
import os
from typing import Any

import torpor


class HalfBad(torpor.Model):
    def setup(self) -> None:
        self.calls = itertools.count()
        self.fail_half = os.environ.get("FAIL_HALF") == "1"

    def predict(self, payload: Any) -> dict[str, Any]:
        if self.fail_half and next(self.calls) % 2 == 1:
            raise RuntimeError("halfbad: this one fails")
        return {"ok": True, "revision": int(os.environ["TORPOR_REVISION"])}
