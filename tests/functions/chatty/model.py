"""Prints a line per request with its request id (for `torpor logs -f`)."""

from __future__ import annotations

from typing import Any

import torpor


class Chatty(torpor.Model):
    def setup(self) -> None:
        print("chatty: set up", flush=True)

    def predict(self, payload: Any) -> Any:
        print(f"chatty: handled request_id={torpor.request_id()} payload={payload}", flush=True)
        return {"request_id": torpor.request_id()}
