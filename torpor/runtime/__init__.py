"""The runtime inside an instance process: hosts a user's Model behind a small HTTP server."""
