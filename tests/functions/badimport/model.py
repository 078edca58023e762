"""Test function whose module cannot be imported."""

import torpor_no_such_module  # noqa: F401

import torpor


class Broken(torpor.Model):
    def predict(self, payload: object) -> object:
        return payload
