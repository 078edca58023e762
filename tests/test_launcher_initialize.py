"""``/initialize`` of a command function: no warm-up hook is not a failed start (issue 16 #13)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from torpor.address import Address
from torpor.backends import StartFailed
from torpor.gateway.upstream import UpstreamClient
from torpor.lifecycle.initialize import initialize


async def answering(tmp_path: Path, status: int) -> tuple[asyncio.AbstractServer, UpstreamClient]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} Whatever\r\ncontent-length: 2\r\n"
                     "connection: close\r\n\r\nno".encode())
        await writer.drain()
        writer.close()

    path = str(tmp_path / "server.sock")
    server = await asyncio.start_unix_server(handle, path)
    return server, UpstreamClient(Address.unix(path))


@pytest.mark.parametrize("status", [404, 405, 501])
async def test_missing_hook_is_fine_for_a_command(tmp_path: Path, status: int) -> None:
    """404, 405 and 501 (Python's http.server for an unknown method) all mean "no warm-up hook"."""
    server, client = await answering(tmp_path, status)
    try:
        assert await initialize(client, command=True, timeout_s=5) == {}
    finally:
        await client.close()
        server.close()


@pytest.mark.parametrize("status", [500, 503])
async def test_a_failing_hook_still_fails_the_start(tmp_path: Path, status: int) -> None:
    """A server error from a real hook fails the cold start."""
    server, client = await answering(tmp_path, status)
    try:
        with pytest.raises(StartFailed, match=f"/initialize answered {status}"):
            await initialize(client, command=True, timeout_s=5)
    finally:
        await client.close()
        server.close()
