"""Test function whose module cannot be imported in an instance (a dependency missing where
instances run), although it imports in torpor's deploy check: the first request's 503 path."""

import os

import torpor

if not os.environ.get("TORPOR_DEPLOY_CHECK"):
    import torpor_no_such_module  # noqa: F401


class Broken(torpor.Model):
    def predict(self, payload: object) -> object:
        return payload
