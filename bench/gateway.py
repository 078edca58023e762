"""Gateway speed, side by side: a no-op through torpor, the same no-op straight to its instance
server (no gateway), and Ray Serve 2.60 with the same no-op, all in one run, alternated per round.

    python -m bench.gateway [--rounds 5] [--c1-requests 2000] [--c32-seconds 3] [--no-ray]

- concurrency 1: sequential POSTs on one kept-alive connection from a raw-socket client in this
  process (microsecond timing; ``hey`` rounds latencies to 0.1 ms); p50 per round.
- concurrency 32: ``hey -c 32 -z <s>`` (Debian package ``hey``); req/s, p50 and p99 per round, and
  the CPU each server process spent per request (from /proc).
- gateway overhead: torpor's p50 minus the direct p50 of the same round.
- Ray: ``bench/ray_peer.py`` (``ray[serve]==2.60.0`` in its own venv under bench/); skipped with a
  message when it cannot be installed.

Every figure is the median over the rounds with min and max beside it; ratios are of medians.
Writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Server, free_port, write_json

NOOP = ROOT / "bench" / "functions" / "noop"
TORPOR, DIRECT, RAY = "torpor", "direct", "ray"
GOALS = {"c1_p50_s": 0.0005, "c1_vs_ray": 8.0, "c32_rps": 5000.0, "c32_vs_ray": 10.0,
         "overhead_s": 0.0003}


# ---------------------------------------------------------------------------------------------------
# load


# the Authorization header each target URL needs (torpor's, with its admin key: the key check is
# part of the gateway's cost, as in production)
AUTH: dict[str, str] = {}


class KeepAliveClient:
    """Sequential HTTP/1.1 requests on one connection; parses just enough to find the body's end."""

    def __init__(self, url: str) -> None:
        match = re.match(r"http://([^:/]+):(\d+)(/.*)?$", url)
        assert match, url
        self.host, self.port, path = match.group(1), int(match.group(2)), match.group(3) or "/"
        auth = f"authorization: {AUTH[url]}\r\n" if url in AUTH else ""
        self.request = (f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{auth}"
                        f"content-length: 0\r\n\r\n").encode()
        self.sock = socket.create_connection((self.host, self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def call(self) -> tuple[int, bytes]:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        length = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        if length is not None:
            size = int(length.group(1))
            while len(rest) < size:
                self.buffer = head + b"\r\n\r\n" + rest
                self._recv()
                rest = self.buffer.partition(b"\r\n\r\n")[2]
            body, self.buffer = rest[:size], rest[size:]
            return status, body
        if b"transfer-encoding: chunked" not in lower:
            raise RuntimeError(f"response without a length: {head!r}")
        while b"0\r\n\r\n" not in rest:
            self.buffer = head + b"\r\n\r\n" + rest
            self._recv()
            rest = self.buffer.partition(b"\r\n\r\n")[2]
        raw, _, self.buffer = rest.partition(b"0\r\n\r\n")
        body = b""
        while raw:
            size_line, _, raw = raw.partition(b"\r\n")
            size = int(size_line, 16)
            body, raw = body + raw[:size], raw[size + 2:]
        return status, body

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buffer += data

    def close(self) -> None:
        self.sock.close()


def latency_c1(url: str, requests: int, warmup: int = 200) -> list[float]:
    client = KeepAliveClient(url)
    samples = []
    try:
        for i in range(warmup + requests):
            started = time.perf_counter()
            status, body = client.call()
            elapsed = time.perf_counter() - started
            if status != 200 or body != b"ok":
                raise RuntimeError(f"{url} answered {status} {body[:200]!r}")
            if i >= warmup:
                samples.append(elapsed)
    finally:
        client.close()
    return samples


def hey_c32(url: str, seconds: float, pids: dict[str, int]) -> dict[str, float]:
    """req/s, p50, p99 at concurrency 32, and CPU seconds per request of each process in ``pids``."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    auth = ["-H", f"Authorization: {AUTH[url]}"] if url in AUTH else []
    out = subprocess.run(["hey", "-c", "32", "-z", f"{seconds}s", "-m", "POST", *auth, url],
                         capture_output=True, text=True, check=True).stdout
    after = {name: cpu_s(pid) for name, pid in pids.items()}
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    ok = int(codes.pop("200", 0))
    if codes or not ok:
        raise RuntimeError(f"{url}: non-200 answers under load: {codes or out[-500:]}")
    result = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_s": float(re.search(r"50% in ([\d.]+) secs", out).group(1)),  # type: ignore[union-attr]
        "p99_s": float(re.search(r"99% in ([\d.]+) secs", out).group(1)),  # type: ignore[union-attr]
    }
    for name in pids:
        result[f"cpu_{name}_s_per_request"] = (after[name] - before[name]) / ok
    return result


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------------
# the three servers


@contextmanager
def torpor_noop() -> Iterator[tuple[str, dict[str, int]]]:
    server = Server(["--auth", "on"])  # the key check is part of the gateway's cost
    try:
        server.deploy(NOOP)
        url = f"{server.url}/fn/noop/invoke"
        AUTH[url] = f"Bearer {server.api_key}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if server.http.post("/fn/noop/invoke").status_code == 200:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("torpor's noop did not answer within 60 s")
            time.sleep(0.05)
        instance = server.http.get("/api/v1/instances", params={"function": "noop"}).json()[0]
        yield url, {"gateway": server.process.pid, "instance": int(instance["pid"])}
    finally:
        server.close()


@contextmanager
def direct_noop() -> Iterator[tuple[str, dict[str, int]]]:
    """The no-op on torpor's instance server, on a TCP port instead of the gateway's Unix socket."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.gateway", "--serve-direct", str(port)],
                               cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}/invoke"
        deadline = time.monotonic() + 30
        while True:
            try:
                KeepAliveClient(url).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the direct instance did not start") from None
                time.sleep(0.05)
        yield url, {"instance": process.pid}
    finally:
        process.terminate()
        process.wait(30)


def serve_direct(port: int) -> None:
    sys.path.insert(0, str(NOOP))
    from model import Noop  # type: ignore[import-not-found]

    from torpor.runtime.serve import serve_tcp

    spec_concurrency = 100  # bench/functions/noop/torpor.yaml
    serve_tcp(Noop(), port, spec_concurrency)


# ---------------------------------------------------------------------------------------------------
# report


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def row(name: str, s: dict[str, float], scale: float, unit: str, digits: int = 3) -> str:
    return (f"  {name:<44} {s['median'] * scale:>10.{digits}f} {s['min'] * scale:>10.{digits}f} "
            f"{s['max'] * scale:>10.{digits}f}  {unit}")


def report(rounds: dict[str, list[dict[str, float]]], ray_skipped: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {"rounds": rounds, "cpus": os.cpu_count()}
    print(f"\n  {'measure (over rounds)':<44} {'median':>10} {'min':>10} {'max':>10}")
    table: dict[str, dict[str, float]] = {}
    for target in (TORPOR, DIRECT, RAY):
        if not rounds.get(target):
            continue
        for key, scale, unit, digits in (("c1_p50_s", 1000, "ms", 3), ("c32_rps", 1, "req/s", 0),
                                         ("c32_p50_s", 1000, "ms", 1), ("c32_p99_s", 1000, "ms", 1)):
            s = summarize([r[key] for r in rounds[target]])
            table[f"{target}.{key}"] = s
            label = {"c1_p50_s": "p50 at concurrency 1", "c32_rps": "throughput at concurrency 32",
                     "c32_p50_s": "p50 at concurrency 32", "c32_p99_s": "p99 at concurrency 32"}[key]
            print(row(f"{target}: {label}", s, scale, unit, digits))
        for key in sorted(k for k in rounds[target][0] if k.startswith("cpu_")):
            s = summarize([r[key] for r in rounds[target]])
            table[f"{target}.{key}"] = s
            print(row(f"{target}: CPU of the {key[4:-14]} per request (c=32)", s, 1e6, "us", 0))
    overhead = summarize([t["c1_p50_s"] - d["c1_p50_s"]
                          for t, d in zip(rounds[TORPOR], rounds[DIRECT], strict=True)])
    table["gateway_overhead_s"] = overhead
    print(row("gateway overhead (torpor - direct p50, c=1)", overhead, 1000, "ms"))
    results["table"] = table

    goals: list[tuple[str, bool]] = []
    t_c1, t_rps = table["torpor.c1_p50_s"]["median"], table["torpor.c32_rps"]["median"]
    goals.append((f"no-op p50 at c=1 {t_c1 * 1000:.3f} ms <= 0.5 ms", t_c1 <= GOALS["c1_p50_s"]))
    goals.append((f"throughput at c=32 {t_rps:.0f} req/s >= 5,000", t_rps >= GOALS["c32_rps"]))
    goals.append((f"gateway overhead {overhead['median'] * 1000:.3f} ms <= 0.3 ms",
                  overhead["median"] <= GOALS["overhead_s"]))
    print()
    if rounds.get(RAY):
        r_c1, r_rps = table["ray.c1_p50_s"]["median"], table["ray.c32_rps"]["median"]
        c1_ratio, rps_ratio = r_c1 / t_c1, t_rps / r_rps
        results["ratios"] = {"ray_c1_p50_over_torpor": c1_ratio, "torpor_c32_rps_over_ray": rps_ratio}
        print(f"  Ray Serve 2.60 p50 / torpor p50 at c=1:   {c1_ratio:6.1f}x  "
              f"({r_c1 * 1000:.2f} ms vs {t_c1 * 1000:.3f} ms)")
        print(f"  torpor / Ray Serve 2.60 req/s at c=32:    {rps_ratio:6.1f}x  "
              f"({t_rps:.0f} vs {r_rps:.0f} req/s)")
        goals.append((f"c=1 p50 {c1_ratio:.1f}x better than Ray Serve (>= 8x)",
                      c1_ratio >= GOALS["c1_vs_ray"]))
        goals.append((f"c=32 throughput {rps_ratio:.1f}x Ray Serve's (>= 10x)",
                      rps_ratio >= GOALS["c32_vs_ray"]))
    else:
        print(f"  Ray Serve: skipped ({ray_skipped})")
    results["goals"] = {text: met for text, met in goals}
    print("\n  goals (BENCHMARKS.md):")
    for text, met in goals:
        print(f"    [{'met' if met else 'MISSED'}] {text}")
    return results


# ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--c1-requests", type=int, default=2000)
    parser.add_argument("--c32-seconds", type=float, default=3.0)
    parser.add_argument("--no-ray", action="store_true", help="leave Ray Serve out")
    parser.add_argument("--serve-direct", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_direct:
        serve_direct(args.serve_direct)
        return
    if shutil.which("hey") is None:
        sys.exit("bench/gateway needs the load generator hey: apt-get install -y hey")

    from bench.ray_peer import RayServe, ensure_ray_venv, noop_url

    ray_skipped: str | None = "--no-ray" if args.no_ray else None
    ray_python = None
    if not args.no_ray:
        ray_python = ensure_ray_venv()
        if ray_python is None:
            ray_skipped = "ray[serve]==2.60.0 could not be installed; see the line above"
    rounds: dict[str, list[dict[str, float]]] = {TORPOR: [], DIRECT: [], RAY: []}
    with torpor_noop() as torpor_target, direct_noop() as direct_target, \
            _maybe_ray(RayServe, noop_url, ray_python) as ray_target:
        targets = {TORPOR: torpor_target, DIRECT: direct_target}
        if ray_target is not None:
            targets[RAY] = ray_target
        for i in range(args.rounds):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for target in order:
                url, pids = targets[target]
                c1 = latency_c1(url, args.c1_requests if target != RAY else args.c1_requests // 4)
                c32 = hey_c32(url, args.c32_seconds, pids)
                result = {"c1_p50_s": statistics.median(c1),
                          "c1_p99_s": statistics.quantiles(c1, n=100)[98],
                          "c32_rps": c32.pop("rps"), "c32_p50_s": c32.pop("p50_s"),
                          "c32_p99_s": c32.pop("p99_s"), **c32}
                rounds[target].append(result)
                print(f"round {i + 1}/{args.rounds} {target:<6} c=1 p50 {result['c1_p50_s'] * 1000:7.3f} ms"
                      f"   c=32 {result['c32_rps']:8.0f} req/s  p50 {result['c32_p50_s'] * 1000:6.1f} ms"
                      f"  p99 {result['c32_p99_s'] * 1000:6.1f} ms", flush=True)
    results = report(rounds, ray_skipped)
    results["config"] = vars(args)
    path = write_json("gateway", results)
    print(f"\nwrote {path.relative_to(ROOT)}")


@contextmanager
def _maybe_ray(ray_serve: Any, noop_url: Any, python: Path | None
               ) -> Iterator[tuple[str, dict[str, int]] | None]:
    if python is None:
        yield None
        return
    port = free_port()
    with ray_serve("noop", port, python=python):
        yield noop_url(port), {}  # Ray spreads over many processes: no CPU per request


if __name__ == "__main__":
    main()
