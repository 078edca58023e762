"""Test function that fails to start while the file ``broken`` exists beside it."""

from pathlib import Path

import torpor


class Flaky(torpor.Model):
    def setup(self) -> None:
        if Path("broken").exists():
            raise RuntimeError("flaky: the file 'broken' is present")

    def predict(self, payload: object) -> object:
        return {"ok": True}
