"""Where an instance's HTTP server listens: a Unix socket on this machine, or a host and port.

One type for the launcher, the upstream client and the routing table, so nothing above the backend
seam parses strings like ``127.0.0.1:9000`` or guesses whether a path is a socket.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Address:
    """``Address.unix(path)`` or ``Address.tcp(host, port)``; exactly one of the two is set."""

    unix_socket: str | None = None
    host: str | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        tcp = self.host is not None and self.port is not None
        if (self.unix_socket is not None) == tcp or (self.host is None) != (self.port is None):
            raise ValueError("an Address is a unix socket path or a host and port, not both or neither")

    @classmethod
    def unix(cls, path: str) -> Address:
        return cls(unix_socket=path)

    @classmethod
    def tcp(cls, host: str, port: int) -> Address:
        return cls(host=host, port=port)

    @property
    def is_unix(self) -> bool:
        return self.unix_socket is not None

    @property
    def authority(self) -> str:
        """The ``Host`` header value and URL authority (``instance`` for a Unix socket)."""
        if self.unix_socket is not None:
            return "instance"
        host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.authority}"

    def __str__(self) -> str:
        return f"unix:{self.unix_socket}" if self.unix_socket is not None else self.authority
