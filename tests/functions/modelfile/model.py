"""Test function that reads its model from TORPOR_MODEL_PATH (torpor's cached copy of model.path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torpor


class ModelFile(torpor.Model):
    def load(self) -> None:
        self.root = Path(os.environ["TORPOR_MODEL_PATH"])
        self.vocab = (self.root / "vocab.txt").read_text().split()

    def predict(self, payload: Any) -> dict[str, Any]:
        return {"vocab": self.vocab, "root": str(self.root)}
