"""Test function whose warm-up always fails."""

import torpor


class BadWarmup(torpor.Model):
    def warmup(self) -> None:
        raise RuntimeError("weights checksum mismatch")

    def predict(self, payload: object) -> object:
        return payload
