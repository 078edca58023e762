"""Oversized request headers against a real ``torpor serve``: the answer, its time, the server's RSS.

    python -m bench.headers [--sizes-mb 1,100]

For each size, a fresh connection to a new ``torpor serve`` on 127.0.0.1 sends ``GET /healthz``
with one header of that many MB, in 64 KiB writes, reading whatever the server answers meanwhile
(a server that answers early is not made to wait for the rest). Reported: the status line (or how
the connection ended), the seconds until then, the bytes sent by then, the server's RSS before and
after and its peak (VmHWM), and how long a ``/healthz`` took right after. Loopback only.
"""

from __future__ import annotations

import argparse
import select
import socket
import time
from pathlib import Path

from bench.harness import Server

CHUNK = 64 * 1024


def rss_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def send_big_header(port: int, size: int, timeout_s: float = 120.0) -> tuple[str, float, int]:
    """(the status line or how it ended, seconds, bytes sent by then)."""
    head = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: "
    total = len(head) + size + 4
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    began = time.monotonic()
    sent, answer, outcome = 0, b"", ""
    filler = b"a" * CHUNK
    try:
        while time.monotonic() - began < timeout_s:
            want_write = [sock] if sent < total else []
            readable, writable, _ = select.select([sock], want_write, [], 1.0)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    outcome = "reset by the server"
                    break
                if not data:
                    outcome = "closed without an answer" if not answer else ""
                    break
                answer += data
                if b"\r\n" in answer:
                    break
            if writable:
                if sent < len(head):
                    piece = head[sent:]
                elif sent < len(head) + size:
                    piece = filler[: min(CHUNK, len(head) + size - sent)]
                else:
                    piece = b"\r\n\r\n"[sent - len(head) - size:]
                try:
                    sent += sock.send(piece)
                except (BrokenPipeError, ConnectionResetError):
                    outcome = "reset while sending"
                    sock.setblocking(True)
                    sock.settimeout(1.0)
                    try:
                        answer += sock.recv(65536)
                    except OSError:
                        pass
                    break
        elapsed = time.monotonic() - began
    finally:
        sock.close()
    status = answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else ""
    return (status + (f" ({outcome})" if outcome and status else "") or outcome or "no answer",
            elapsed, sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mb", default="1,100")
    args = parser.parse_args()
    for size_mb in [float(s) for s in args.sizes_mb.split(",") if s]:
        server = Server()
        try:
            pid = server.process.pid
            time.sleep(1.0)  # let start-up settle
            before = rss_kb(pid)
            status, elapsed, sent = send_big_header(server.port, int(size_mb * 1024 * 1024))
            time.sleep(0.5)
            after = rss_kb(pid)
            began = time.monotonic()
            health = server.http.get("/healthz").status_code
            health_s = time.monotonic() - began
            print(f"{size_mb:g} MB header: {status} after {elapsed:.3f} s, {sent / 2**20:.2f} MiB sent; "
                  f"server RSS {before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB "
                  f"(+{(after['VmRSS'] - before['VmRSS']) / 1024:.1f}), "
                  f"peak {after['VmHWM'] / 1024:.0f} MiB; "
                  f"/healthz then {health} in {health_s * 1000:.1f} ms", flush=True)
        finally:
            server.close()


if __name__ == "__main__":
    main()
