"""Holds a lock while it "works" for the request's service time: one request at a time, like a GPU."""

from __future__ import annotations

import asyncio
from typing import Any

import torpor


class OneAtATime(torpor.Model):
    def setup(self) -> None:
        self.lock = asyncio.Lock()  # FIFO: requests pushed to this instance wait here in order

    async def predict(self, payload: Any) -> str:
        async with self.lock:
            await asyncio.sleep(float(payload["service_ms"]) / 1000)
        return "ok"
