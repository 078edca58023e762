"""The smallest torpor function: echoes its payload, and says which instance answered."""

from __future__ import annotations

import os
from typing import Any

import torpor


class Echo(torpor.Model):
    def setup(self) -> None:
        self.instance = os.environ.get("TORPOR_INSTANCE", "local")
        self.calls = 0

    def predict(self, payload: Any) -> dict[str, Any]:
        self.calls += 1
        return {"echo": payload, "instance": self.instance, "calls": self.calls}
