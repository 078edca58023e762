"""Kept-alive HTTP connections from the gateway to one instance (Unix socket or loopback TCP)."""

from __future__ import annotations

import aiohttp

_SKIP_AUTO = frozenset({"User-Agent", "Accept-Encoding", "Content-Type"})


class UpstreamClient:
    """One pooled client per instance; ``base`` is the URL prefix requests are sent to."""

    def __init__(self, *, unix_socket: str | None = None, port: int | None = None) -> None:
        connector: aiohttp.BaseConnector
        if unix_socket is not None:
            connector = aiohttp.UnixConnector(path=unix_socket, limit=0)
            self.base = "http://instance"
        elif port is not None:
            connector = aiohttp.TCPConnector(limit=0, use_dns_cache=False)
            self.base = f"http://127.0.0.1:{port}"
        else:
            raise ValueError("an upstream needs a unix_socket or a port")
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        await self.session.close()
