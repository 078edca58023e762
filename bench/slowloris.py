"""Slowloris against a real ``torpor serve`` held to 1024 file descriptors: does /healthz answer?

    python -m bench.slowloris [--half-sent 1500] [--addresses 1]

Starts ``torpor serve`` on 127.0.0.1 with RLIMIT_NOFILE 1024 (soft and hard), opens ``--half-sent``
connections from 127.0.0.2 (spread over ``--addresses`` addresses from there on) that each send
the start of a request and never finish it, then makes 20 ``/healthz`` requests from 127.0.0.1 and
reports how many got 200, the slowest, and the server's log lines about the caps. Loopback only.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import ROOT, free_port

SERVER_FDS = 1024


def healthz(port: int, timeout_s: float = 5.0) -> tuple[str, float]:
    began = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            line = sock.recv(100).split(b"\r\n")[0].decode("latin-1")
            return line or "closed without an answer", time.monotonic() - began
    except OSError as exc:
        return type(exc).__name__, time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--half-sent", type=int, default=1500)
    parser.add_argument("--addresses", type=int, default=1, help="source addresses 127.0.0.2 on")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.half_sent + 256
    if hard != resource.RLIM_INFINITY and hard < want:
        sys.exit(f"this needs {want} file descriptors; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    def limit_server() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_FDS, SERVER_FDS))

    tmp = Path(tempfile.mkdtemp(prefix="torpor-slowloris-"))
    port = free_port()
    with open(tmp / "serve.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "torpor", "serve", "--port", str(port), "--data-dir", str(tmp / "data")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_server)
    attack: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not healthz(port, 1.0)[0].startswith("HTTP/1.1 200"):
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit(f"torpor serve did not start; see {tmp / 'serve.log'}")
            time.sleep(0.1)
        for i in range(args.half_sent):
            sock = socket.socket()
            sock.bind((f"127.0.0.{2 + i % args.addresses}", 0))
            sock.settimeout(2)
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: ")
            except OSError:
                pass
            attack.append(sock)
        time.sleep(1.0)
        results = [healthz(port) for _ in range(20)]
        answered = sum(status.startswith("HTTP/1.1 200") for status, _ in results)
        print(f"{args.half_sent} half-sent requests from {args.addresses} address(es), server fd limit "
              f"{SERVER_FDS}: /healthz {answered}/20 answered 200, slowest "
              f"{max(s for _, s in results):.2f} s; outcomes {sorted({status for status, _ in results})}")
    finally:
        for sock in attack:
            sock.close()
        server.terminate()
        server.wait(30)
    for line in (tmp / "serve.log").read_text(errors="replace").splitlines():
        if "connection" in line:
            print("  log:", line)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
