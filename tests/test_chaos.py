"""Chaos, bounded and on loopback only: thousands of requests over three functions while instances are
SIGKILLed at random and ``torpor serve`` itself is SIGKILLed twice and restarted on the same data dir
and port.

What a user depends on, checked at the end:

- every request ends, within its timeout, as 200, 502, 503 or 504; while the server is down a client
  meets a refused connection (``refused``) or, for a request in flight at the kill, a dropped one
  (``dropped``): what a load balancer in front would turn into 502/503. Nothing else (no 500, no hang);
- nothing is orphaned: once the last server has stopped, no instance, template or guard process of
  any of the servers is left (the guard kills what a SIGKILLed server leaves);
- the ledger: every interval closed, per instance no gap and no overlap from its first start to its
  end; the intervals open at a SIGKILL are closed on restart at the last moment the dead server was
  known alive (not after the kill, not more than a few heartbeats before it, never before they
  began); and the bill's cost is exactly the sum of the ledger's seconds × prices.

The summary line (requests by outcome, kills, restarts, ledger check) is printed at the end (``-s``).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TorporServer, make_function, process_alive

pytestmark = pytest.mark.timeout(240)

MIN_ANSWERED = 2000  # requests answered with an HTTP status
SERVER_KILLS = 2
WORKERS = 4
CLIENT_TIMEOUT_S = 10.0  # a request still unanswered after this hangs: a failure
REQUEST_TIMEOUT_S = 3.0  # the functions' timeout_s and queue.timeout_s
DEADLINE_S = 75.0  # the load stops here even if short of MIN_ANSWERED (then the test fails)
HEARTBEAT_SLACK_S = 3.0  # an interval open at a kill closes no earlier than this before it
NOTICE_S = 3.0  # a SIGKILLed instance's last interval ends no later than this after the kill
CONTROL_READS = ("/api/v1/billing", "/metrics", "/api/v1/functions", "/api/v1/instances?all=true",
                 "/api/v1/functions/idle", "/healthz")
ALLOWED = {"200", "502", "503", "504", "refused", "dropped"}
PRICES = {"cpu_per_vcpu_s": "0.001", "cpu_idle_per_vcpu_s": "0.0002",
          "memory_per_gb_s": "0.0001", "memory_idle_per_gb_s": "0.00005"}
FUNCTIONS = ("echo", "slow", "spawned", "idle")
ACTIVE = {"starting", "ready", "busy", "draining"}
MICROSECOND = Decimal("1e-6")


@dataclass
class Request:
    function: str
    started: float  # time.time()
    ended: float
    outcome: str


@dataclass
class Chaos:
    """What the chaos thread did, for the checks and the summary."""

    instance_kills: int = 0
    killed: list[tuple[str, str, float]] = field(default_factory=list)  # instance id, state, when
    template_kills: int = 0
    api: Counter[str] = field(default_factory=Counter)  # control API reads during the chaos
    server_kills: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _ex(t: float) -> Decimal:
    """A time as the bill reads it: its shortest decimal form, to the microsecond."""
    return Decimal(repr(t)).quantize(MICROSECOND, rounding=ROUND_HALF_EVEN)


def ledger_rows(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(data_dir / "torpor.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM ledger ORDER BY id")]


def server_of(pid: int) -> int | None:
    """The server a process was started for: an instance's or template's ``TORPOR_SERVER_PID``,
    a guard's ``--server-pid``, a server's own pid; None for anything else (or gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not process_alive(pid):
        return None
    for item in environ:
        if item.startswith(b"TORPOR_SERVER_PID="):
            return int(item.split(b"=", 1)[1])
    if "torpor.backends.local.guard" in args and "--server-pid" in args:
        return int(args[args.index("--server-pid") + 1])
    if args[1:4] == ["-m", "torpor", "serve"]:
        return pid
    return None


def leftovers(server_pids: set[int], data_dir: Path, live: int | None = None) -> list[str]:
    """Processes of these servers, and any other naming the data dir, except those of ``live``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        server = server_of(int(entry))
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if server != live and (server in server_pids or str(data_dir) in cmdline):
            found.append(f"{entry} (server {server}): {cmdline[:200]}")
    return found


def wait_no_leftovers(server_pids: set[int], data_dir: Path, timeout_s: float,
                      live: int | None = None) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := leftovers(server_pids, data_dir, live)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Cluster:
    """The server now running on the chaos data dir and port; replaced on each restart."""

    def __init__(self, make_server: Any, data_dir: Path, deploy: list[Path]) -> None:
        self.make_server = make_server
        self.data_dir = data_dir
        self.server: TorporServer = make_server(deploy, data_dir=data_dir)
        self.port = self.server.port
        self.url = self.server.url
        self.pids = {self.server.process.pid}
        self.down_since: float | None = None

    def restart(self) -> None:
        self.server = self.make_server(data_dir=self.data_dir, port=self.port)
        self.pids.add(self.server.process.pid)


def client(url: str, headers: httpx.Headers, functions: list[str], stop: threading.Event,
           out: list[Request], seed: int, pause_s: float = 0.0) -> None:
    """Send requests until ``stop``; ``headers``: the fixture's (its credentials, if any)."""
    rng = random.Random(seed)
    timeout = httpx.Timeout(CLIENT_TIMEOUT_S, connect=2.0)
    with httpx.Client(base_url=url, timeout=timeout, headers=headers) as http:
        while not stop.is_set():
            name = rng.choice(functions)
            payload: dict[str, Any] = {"n": rng.random()}
            if name == "slow":  # now and then one that outlives its timeout_s: a 504 in 3 s
                payload = {"sleep_s": REQUEST_TIMEOUT_S + 2 if rng.random() < 0.01 else 0.05}
            started = time.time()
            try:
                outcome = str(http.post(f"/fn/{name}/invoke", json=payload).status_code)
            except httpx.ConnectError:
                outcome = "refused"
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                outcome = "dropped"
            except httpx.TimeoutException:
                outcome = "timeout"
            out.append(Request(name, started, time.time(), outcome))
            if outcome == "refused":
                time.sleep(0.05)  # the server is down: a load balancer would retry, not spin
            stop.wait(pause_s)


def chaos(cluster: Cluster, answered: Any, stop: threading.Event, record: Chaos) -> None:
    """Kill random instances (sometimes a template) every few tenths of a second; SIGKILL the server
    after every MIN_ANSWERED / (SERVER_KILLS + 1) answered requests and restart it (the first time
    once its guard has cleaned up, the second at once)."""
    rng = random.Random(12)
    next_server_kill = MIN_ANSWERED // (SERVER_KILLS + 1)
    try:
        while not stop.is_set():
            time.sleep(rng.uniform(0.1, 0.4))
            server = cluster.server
            if len(record.server_kills) < SERVER_KILLS and answered() >= next_server_kill:
                kill_server(cluster, record, wait_for_guard=len(record.server_kills) % 2 == 0)
                next_server_kill = answered() + MIN_ANSWERED // (SERVER_KILLS + 1)
                continue
            # the control API answers through it all (the server is up: only this thread kills it)
            path = rng.choice(CONTROL_READS)
            record.api[f"{path} {server.http.get(path).status_code}"] += 1
            instances = [i for i in server.instances() if i.get("pid")]
            templates = [fn["template"]["pid"] for name in ("echo", "slow", "idle")
                         if (fn := server.function(name)).get("template") and fn["template"].get("pid")]
            marker = f"TORPOR_SERVER_PID={server.process.pid}".encode()
            instance: dict[str, Any] = {}
            if templates and rng.random() < 0.08:
                victim, kind = rng.choice(templates), "template"
            elif instances:
                instance = rng.choice(instances)
                victim, kind = instance["pid"], "instance"
            else:
                continue
            try:  # the pid must still be this server's (never a reused pid)
                if marker not in Path(f"/proc/{victim}/environ").read_bytes().split(b"\0"):
                    continue
                os.kill(victim, signal.SIGKILL)
            except OSError:
                continue
            if kind == "template":
                record.template_kills += 1
            else:
                record.instance_kills += 1
                record.killed.append((instance["id"], instance["state"], time.time()))
    except Exception as exc:  # reported by the test, not lost in a thread
        record.errors.append(f"chaos thread: {exc!r}")
        raise


def kill_server(cluster: Cluster, record: Chaos, wait_for_guard: bool) -> None:
    """SIGKILL the server; note what the ledger left open; restart it, after its guard has cleaned
    up or at once (as a supervisor would), and check that nothing of the killed one is left."""
    server = cluster.server
    pid = server.process.pid
    killed_at = time.time()
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    open_rows = [row for row in ledger_rows(cluster.data_dir) if row["end"] is None]
    if wait_for_guard:
        left = wait_no_leftovers({pid}, cluster.data_dir, timeout_s=10)
    cleaned_at = time.time()
    cluster.restart()
    up_at = time.time()
    # the dead server's instances are history: none is listed live, each stopped as of the crash
    ended = {row["instance_id"] for row in open_rows}
    ghosts = [i["id"] for i in cluster.server.instances(all=True)
              if i["id"] in ended and (i["exited_at"] is None or i["state"] != "stopped")]
    if not wait_for_guard:
        left = wait_no_leftovers({pid}, cluster.data_dir, timeout_s=10,
                                 live=cluster.server.process.pid)
        cleaned_at = time.time()
    record.server_kills.append({"pid": pid, "killed_at": killed_at, "up_at": up_at,
                                "open_rows": open_rows, "left": left, "ghosts": ghosts,
                                "cleanup_s": round(cleaned_at - killed_at, 2)})


def check_ledger(rows: list[dict[str, Any]], kills: list[dict[str, Any]],
                 killed: list[tuple[str, str, float]]) -> str:
    """No open interval, no gap or overlap per instance; the crash-closed ones closed sensibly."""
    problems = []
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_instance.setdefault(row["instance_id"], []).append(row)
        if row["end"] is None:
            problems.append(f"interval {row['id']} of {row['instance_id']} is still open")
        elif row["end"] < row["start"]:
            problems.append(f"interval {row['id']} of {row['instance_id']} ends before it starts: "
                            f"{row['start']!r} → {row['end']!r}")
    for instance, parts in by_instance.items():
        parts.sort(key=lambda row: (row["start"], row["id"]))
        for before, after in pairwise(parts):
            if before["end"] != after["start"]:
                kind = "gap" if (before["end"] or 0) < after["start"] else "overlap"
                problems.append(f"{kind} in {instance}: {before['state']} ends {before['end']!r}, "
                                f"{after['state']} starts {after['start']!r}")
    # a killed instance is billed no longer than it takes the server to notice (not one in idle mode:
    # frozen, perhaps since its state was read, it lives on until thawed, as a cgroup-frozen process
    # acts on no signal, SIGKILL included)
    for instance, state, killed_at in killed:
        last_end = max(row["end"] or 0 for row in by_instance.get(instance, []))
        if not instance.startswith("idle-") and last_end > killed_at + NOTICE_S:
            problems.append(f"{instance} ({state}) was SIGKILLed at {killed_at!r} and billed until "
                            f"{last_end!r}")
    by_id = {row["id"]: row for row in rows}
    for kill in kills:
        for row in kill["open_rows"]:
            end = by_id[row["id"]]["end"]
            earliest = max(row["start"], kill["killed_at"] - HEARTBEAT_SLACK_S)
            if end is None or not earliest <= end <= kill["killed_at"]:
                problems.append(f"interval {row['id']} ({row['state']} of {row['instance_id']}, "
                                f"from {row['start']!r}) open at the kill at "
                                f"{kill['killed_at']!r} was closed at {end!r}")
    assert not problems, "ledger:\n" + "\n".join(problems[:20])
    closed = sum(len(kill["open_rows"]) for kill in kills)
    return (f"{len(rows)} intervals of {len(by_instance)} instances, no gap or overlap; "
            f"{closed} left open by the killed servers closed at the last moment each was known alive")


def expected_cost(rows: list[dict[str, Any]], since: float, until: float) -> tuple[Decimal, Decimal]:
    """The ledger's seconds × prices over [since, until): (cost, instance-seconds)."""
    lo, hi = _ex(since), _ex(until)
    cost = seconds = Decimal(0)
    prices = {key: Decimal(value) for key, value in PRICES.items()}
    for row in rows:
        end = hi if row["end"] is None else min(_ex(row["end"]), hi)
        start = max(_ex(row["start"]), lo)
        if end <= start:
            continue
        span = end - start
        active = row["state"] in ACTIVE
        cpu = prices["cpu_per_vcpu_s" if active else "cpu_idle_per_vcpu_s"]
        memory = prices["memory_per_gb_s" if active else "memory_idle_per_gb_s"]
        cost += span * Decimal(repr(row["cpus"])) * cpu + span * row["memory_mb"] / 1024 * memory
        seconds += span
    return cost, seconds


def test_chaos_requests_end_nothing_orphaned_ledger_sums_to_bill(make_server: Any,
                                                                 tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "config.yaml").write_text(
        "prices:\n" + "".join(f"  {key}: '{value}'\n" for key, value in PRICES.items()))
    limits = {"timeout_s": REQUEST_TIMEOUT_S,
              "queue": {"max_queued": 50, "timeout_s": REQUEST_TIMEOUT_S}}
    scaling = {"max_instances": 3, "scale_to_zero_grace_s": 30, "tick_s": 0.5}
    functions = [
        make_function(tmp_path, "echo", scaling=scaling, **limits),  # forked from a template
        make_function(tmp_path, "slow", concurrency=4, scaling={**scaling, "max_instances": 2},
                      **limits),
        make_function(tmp_path, "echo", name="spawned", scaling=scaling,
                      runtime={"handler": "model:Echo", "templates": False}, **limits),
        # a provisioned instance in idle mode, frozen between its slow-paced requests
        make_function(tmp_path, "echo", name="idle", **limits,
                      scaling={**scaling, "provisioned": 1, "idle_mode": True, "idle_after_s": 0.2}),
    ]
    since = time.time()
    cluster = Cluster(make_server, data_dir, functions)

    requests: list[Request] = []
    stop = threading.Event()
    record = Chaos()

    def answered() -> int:
        return sum(1 for r in list(requests) if r.outcome.isdigit())

    workers = [threading.Thread(target=client, daemon=True,
                                args=(cluster.url, cluster.server.http.headers,
                                      ["echo", "echo", "slow", "spawned"], stop,
                                      requests, seed))
               for seed in range(WORKERS)]
    workers.append(threading.Thread(target=client, daemon=True,
                                    args=(cluster.url, cluster.server.http.headers, ["idle"], stop,
                                          requests, WORKERS, 0.4)))
    monkey = threading.Thread(target=chaos, args=(cluster, answered, stop, record), daemon=True)
    started = time.monotonic()
    for thread in [*workers, monkey]:
        thread.start()
    while time.monotonic() - started < DEADLINE_S and not (
            answered() >= MIN_ANSWERED and len(record.server_kills) == SERVER_KILLS):
        time.sleep(0.2)
    stop.set()
    monkey.join(30)
    for worker in workers:
        worker.join(CLIENT_TIMEOUT_S + 5)
    load_s = time.monotonic() - started
    assert not monkey.is_alive() and not any(w.is_alive() for w in workers), "a thread hung"
    assert not record.errors, record.errors

    outcomes = Counter(r.outcome for r in requests)
    by_function = {name: dict(Counter(r.outcome for r in requests if r.function == name))
                   for name in FUNCTIONS}
    longest = max(r.ended - r.started for r in requests)
    summary = (f"chaos: {len(requests)} requests in {load_s:.1f} s, by outcome {dict(outcomes)} "
               f"(per function {by_function}; longest {longest:.2f} s); "
               f"{record.instance_kills} instance and {record.template_kills} template SIGKILLs, "
               f"{len(record.server_kills)} server SIGKILLs and restarts "
               f"(nothing of the killed server left {[k['cleanup_s'] for k in record.server_kills]} s "
               f"after the kill; the second one restarted at once, checked after the restart); "
               f"{sum(record.api.values())} control API reads meanwhile")
    print("\n" + summary)

    # every request ended, within its timeout, with an allowed outcome
    assert set(outcomes) <= ALLOWED, summary
    assert longest < CLIENT_TIMEOUT_S, summary
    # a 504 came when its timeout was up (queue.timeout_s + timeout_s at most), not later
    late = [r for r in requests if r.outcome == "504" and r.ended - r.started > 2 * REQUEST_TIMEOUT_S + 1]
    assert not late, late[:5]
    assert answered() >= MIN_ANSWERED, summary
    assert outcomes["200"] >= 0.8 * answered(), summary
    assert len(record.server_kills) == SERVER_KILLS, summary
    assert record.instance_kills >= 10, summary
    assert record.api and all(key.endswith(" 200") for key in record.api), record.api
    # a refused or dropped request met a server that was down (killed, not yet listening again)
    downs = [(kill["killed_at"] - 0.5, kill["up_at"]) for kill in record.server_kills]
    stray = [r for r in requests if r.outcome in ("refused", "dropped")
             and not any(lo <= r.ended and r.started <= hi for lo, hi in downs)]
    assert not stray, f"refused or dropped while the server was up: {stray[:5]}"
    # the guard left nothing of a killed server
    for kill in record.server_kills:
        assert kill["left"] == [], f"server {kill['pid']} was SIGKILLed; left: {kill['left']}"
        assert kill["ghosts"] == [], f"listed live after server {kill['pid']}'s death: {kill['ghosts']}"

    # the bill is the ledger's seconds × prices, exactly
    time.sleep(1.0)
    until = time.time() - 0.5
    response = cluster.server.http.get("/api/v1/billing", params={"since": since, "until": until})
    assert response.status_code == 200, response.text
    bill = response.json()
    cost, seconds = expected_cost(ledger_rows(data_dir), since, until)
    billed_seconds = sum(Decimal(line["active_seconds"]) + Decimal(line["idle_seconds"])
                         for line in bill["functions"])
    assert (Decimal(bill["cost"]), billed_seconds) == (cost, seconds)
    assert {line["function"] for line in bill["functions"]} == set(FUNCTIONS)

    # the last server stops cleanly, and nothing of any server is left
    assert cluster.server.stop(signal.SIGTERM) == 0
    left = wait_no_leftovers(cluster.pids, data_dir, timeout_s=10)
    assert left == [], f"left after the last stop: {left}"

    guard = (data_dir / "logs" / "guard.log").read_text().strip().splitlines()
    rows = ledger_rows(data_dir)
    ledger_summary = check_ledger(rows, record.server_kills, record.killed)
    print(f"{summary}; guard: {guard}; ledger: {ledger_summary}; bill {bill['cost']} {bill['currency']} = "
          f"ledger seconds × prices ({seconds} instance-seconds)")
