"""Test function: exits the whole process mid-request when asked to."""

from __future__ import annotations

import os
import time
from typing import Any

import torpor


class Crashy(torpor.Model):
    def predict(self, payload: Any) -> dict[str, Any]:
        if payload.get("crash"):
            time.sleep(0.1)
            os._exit(17)
        return {"ok": True, "instance": os.environ["TORPOR_INSTANCE"]}
