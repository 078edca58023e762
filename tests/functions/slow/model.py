"""Test function: sleeps for payload["sleep_s"], then answers with its instance id."""

from __future__ import annotations

import os
import time
from typing import Any

import torpor


class Slow(torpor.Model):
    def predict(self, payload: Any) -> dict[str, Any]:
        time.sleep(float((payload or {}).get("sleep_s", 0)))
        return {"n": (payload or {}).get("n"), "instance": os.environ["TORPOR_INSTANCE"],
                "revision": int(os.environ["TORPOR_REVISION"])}
