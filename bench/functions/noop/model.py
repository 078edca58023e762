"""A no-op handler: the cost of a request through torpor is all that is left to measure."""

from __future__ import annotations

from typing import Any

import torpor


class Noop(torpor.Model):
    async def predict(self, payload: Any) -> str:
        return "ok"
