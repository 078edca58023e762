"""Test function for idle mode: burns CPU in a background thread, counts freeze/thaw hooks."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import torpor


class Sleepy(torpor.Model):
    def setup(self) -> None:
        self.freezes = 0
        self.thaws = 0
        self.freeze_delay_s = float(os.environ.get("FREEZE_DELAY_S", "0"))
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self) -> None:
        while True:  # uses CPU whenever the instance is not frozen
            sum(range(10_000))
            time.sleep(0.001)

    def on_freeze(self) -> None:
        time.sleep(self.freeze_delay_s)
        self.freezes += 1

    def on_thaw(self) -> None:
        self.thaws += 1

    def predict(self, payload: Any) -> dict[str, Any]:
        return {"echo": payload, "freezes": self.freezes, "thaws": self.thaws, "pid": os.getpid()}
