"""Test function that fails to start while the file named by ``$FLAKY_FLAG`` exists.

The flag lives outside the function's folder: instances run from the uploaded copy of the folder,
so a file changed in the user's folder after deploy would not be seen.
"""

import os
from pathlib import Path

import torpor


class Flaky(torpor.Model):
    def setup(self) -> None:
        if Path(os.environ["FLAKY_FLAG"]).exists():
            raise RuntimeError("flaky: the file 'broken' is present")

    def predict(self, payload: object) -> object:
        return {"ok": True}
