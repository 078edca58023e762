"""Test function: module state set in load(), mutated per request, to prove forked siblings share none."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import torpor

COUNTER = {"n": 0}


class Stateful(torpor.Model):
    def load(self) -> None:
        self.loaded_in = os.getpid()  # the template's pid when forked
        self.table = list(range(1000))

    def predict(self, payload: Any) -> dict[str, Any]:
        if payload.get("crash_template"):
            os.kill(self.loaded_in, 9)
        time.sleep(payload.get("sleep_s", 0))
        COUNTER["n"] += payload.get("add", 0)
        return {"counter": COUNTER["n"], "pid": os.getpid(), "loaded_in": self.loaded_in,
                "random": random.random(), "sum": sum(self.table),
                "instance": os.environ["TORPOR_INSTANCE"]}
