"""examples/chat (SmolLM2-135M on CPU): time to first token and tokens/s, warm, cold and thawed,
through torpor and straight to the instance; then seed 004's load test.

    .venv/bin/python -m bench.llm [--runs 7] [--load-s 30] [--no-load]

Every request is a streamed ``/v1/chat/completions`` (temperature 0, a fixed prompt, 32 tokens),
timed from sending to the first content event (TTFT) and to the last one (decode tokens/s).

- warm: one instance kept, alternately through the gateway and straight to its Unix socket (the
  difference of the paired times is what the gateway adds to TTFT);
- cold: a function deployed afresh for each request (its template ready, zero instances): fork +
  setup + /initialize + the request;
- thawed: a provisioned instance in idle mode, frozen, woken by the request.

The cases take turns within each round (the box's load drifts; a case measured all at once would
carry its own slice of that drift), and the first round is discarded.

Then ``hey -z 30s -c 5`` POSTs ``/v1/chat/completions`` with ``max_tokens`` 10 (seed 004's test; needs
``hey``: ``make bench-setup``) while the instances the autoscaler started are sampled every 0.5 s.
Goals (BENCHMARKS.md): the gateway adds ≤ 1 ms to TTFT; a cold start adds ≤ 100 ms to it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import threading
import time
from typing import Any

import httpx

from bench.harness import ROOT, Server, ms, print_table, summary, write_json

CHAT = ROOT / "examples" / "chat"
MAX_TOKENS = 32
BODY = {"model": "chat", "stream": True, "max_tokens": MAX_TOKENS, "temperature": 0,
        "messages": [{"role": "user", "content": "Tell me a story about a dragon."}]}


def stream_once(http: httpx.Client, model: str = "chat", expect: str | None = None) -> dict[str, Any]:
    """TTFT, decode tokens/s and the x-torpor-start header of one streamed chat completion."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    with http.stream("POST", "/v1/chat/completions", json={**BODY, "model": model}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
                tokens += 1
    if first is None or last is None:
        raise RuntimeError("no content event")
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    start = response.headers.get("x-torpor-start", "direct")
    if expect is not None and start != expect:
        raise RuntimeError(f"{model}: expected x-torpor-start {expect}, got {start}")
    return {"ttft_s": first - started, "tokens_per_s": rate, "start": start}


def instances(server: Server, name: str = "chat", all: bool = False) -> list[dict[str, Any]]:
    rows = server.http.get("/api/v1/instances", params={"function": name, "all": all}).json()
    return list(rows)


def wait_state(server: Server, name: str, state: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [r for r in instances(server, name) if r["state"] == state]
        if rows:
            return rows[0]
        time.sleep(0.02)
    raise RuntimeError(f"{name}: no instance {state} within {timeout_s}s")


def rounds(server: Server, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Every round measures each case once, so the box's drifting load weighs on all of them alike.

    Three functions from the same example: ``chat-warm`` (one instance kept), ``chat-idle`` (one
    provisioned instance in idle mode) and ``chat-cold`` (deployed afresh for each of its requests).
    """
    server.deploy(CHAT, name="chat-warm", scaling={"min_instances": 1, "max_instances": 1})
    server.deploy(CHAT, name="chat-idle", scaling={"provisioned": 1, "max_instances": 1,
                                                   "idle_mode": True, "idle_after_s": 0.3,
                                                   "tick_s": 0.5})
    for name in ("chat-warm", "chat-idle"):
        server.wait_template(name, timeout_s=300)
    address = wait_state(server, "chat-warm", "ready")["address"].removeprefix("unix:")
    direct = httpx.Client(transport=httpx.HTTPTransport(uds=address), base_url="http://instance",
                          timeout=120)
    cases = ("warm, through torpor", "warm, straight to instance", "cold, through torpor",
             "thawed, through torpor")
    out: dict[str, list[dict[str, Any]]] = {case: [] for case in cases}
    try:
        stream_once(server.http, "chat-warm")  # page cache, first-use costs
        for n in range(runs + 1):
            samples = {"warm, through torpor": stream_once(server.http, "chat-warm"),
                       "warm, straight to instance": stream_once(direct, "chat-warm")}
            server.deploy(CHAT, name="chat-cold", scaling={"min_instances": 0, "max_instances": 1})
            server.wait_template("chat-cold", timeout_s=300)
            samples["cold, through torpor"] = stream_once(server.http, "chat-cold", expect="cold")
            breakdown = instances(server, "chat-cold")[0]["cold_start"]
            samples["cold, through torpor"]["start_to_ready_s"] = breakdown["total_s"]
            samples["cold, through torpor"]["fork_s"] = breakdown.get("fork_s") or float("nan")
            server.delete("chat-cold")  # a redeploy would keep the old revision's instance serving
            server.wait_no_instances("chat-cold")
            wait_state(server, "chat-idle", "frozen")
            samples["thawed, through torpor"] = stream_once(server.http, "chat-idle", expect="thawed")
            if n:  # the first round pays for first uses (template pages, a first thaw)
                for case, sample in samples.items():
                    out[case].append(sample)
    finally:
        direct.close()
    for name in ("chat-warm", "chat-idle"):
        server.delete(name)
    return out


def gateway_ttft(server: Server, runs: int) -> list[float]:
    """What the gateway adds to TTFT, without the model's noise: a model that yields at once
    (bench/functions/tokens), streamed alternately through torpor and straight to its instance."""
    server.deploy(ROOT / "bench" / "functions" / "tokens")
    server.wait_template("tokens", timeout_s=300)
    address = wait_state(server, "tokens", "ready")["address"].removeprefix("unix:")
    added = []
    with httpx.Client(transport=httpx.HTTPTransport(uds=address), base_url="http://instance",
                      timeout=30) as direct:
        for n in range(runs + 20):
            through = stream_once(server.http, "tokens")["ttft_s"]
            straight = stream_once(direct, "tokens")["ttft_s"]
            if n >= 20:  # warm-up pairs
                added.append(through - straight)
    server.delete("tokens")
    return added


def load_test(server: Server, seconds: int) -> dict[str, Any]:
    hey = shutil.which("hey")
    if hey is None:
        return {"skipped": "hey is not installed (make bench-setup)"}
    server.deploy(CHAT, scaling={"min_instances": 0, "max_instances": 4, "target_utilization": 1.0})
    server.wait_template("chat", timeout_s=300)
    body = json.dumps({"model": "chat", "max_tokens": 10, "messages": [
        {"role": "user", "content": "What is the capital of France?"}]})
    timeline: list[tuple[float, int, int]] = []
    done = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not done.is_set():
            rows = instances(server)
            ready = sum(1 for r in rows if r["state"] in ("ready", "busy"))
            timeline.append((round(time.monotonic() - started, 1), len(rows), ready))
            time.sleep(0.5)

    before = {r["id"] for r in instances(server, all=True)}
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    result = subprocess.run([hey, "-z", f"{seconds}s", "-c", "5", "-m", "POST", "-T", "application/json",
                             "-d", body, f"{server.url}/v1/chat/completions"],
                            capture_output=True, text=True, timeout=seconds + 120)
    done.set()
    watcher.join()
    started_ids = {r["id"] for r in instances(server, all=True)} - before
    server.delete("chat")
    return {"hey": result.stdout, "timeline": timeline, "instances_started": len(started_ids),
            "max_instances_live": max((t[1] for t in timeline), default=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--load-s", type=int, default=30)
    parser.add_argument("--gateway-runs", type=int, default=300)
    parser.add_argument("--no-load", action="store_true", help="skip the hey load test")
    args = parser.parse_args()
    server = Server()
    try:
        by_case = rounds(server, args.runs)
        gateway_added = gateway_ttft(server, args.gateway_runs)
        load = {} if args.no_load else load_test(server, args.load_s)
    finally:
        server.close()
    results = {case: {"ttft_s": summary([s["ttft_s"] for s in samples]),
                      "tokens_per_s": summary([s["tokens_per_s"] for s in samples])}
               for case, samples in by_case.items()}
    print_table("time to first token (SmolLM2-135M, CPU, 32-token streams; cold: zero instances)",
                [(case, r["ttft_s"]) for case, r in results.items()])
    print("\ndecode tokens/s, median (min–max):")
    for case, r in results.items():
        t = r["tokens_per_s"]
        print(f"  {case:<40} {t['median']:6.1f} ({t['min']:.1f}–{t['max']:.1f})")
    paired = [a["ttft_s"] - b["ttft_s"] for a, b in zip(by_case["warm, through torpor"],
                                                        by_case["warm, straight to instance"],
                                                        strict=True)]
    cold_added = (results["cold, through torpor"]["ttft_s"]["median"]
                  - results["warm, through torpor"]["ttft_s"]["median"])
    thaw_added = (results["thawed, through torpor"]["ttft_s"]["median"]
                  - results["warm, through torpor"]["ttft_s"]["median"])
    ready = summary([s["start_to_ready_s"] for s in by_case["cold, through torpor"]])
    fork = summary([s["fork_s"] for s in by_case["cold, through torpor"]])
    gateway = summary(gateway_added)
    print(f"\ngateway adds to TTFT, instant model, {len(gateway_added)} pairs: median "
          f"{gateway['median'] * 1e6:.0f} µs (min {gateway['min'] * 1e6:.0f}, max "
          f"{gateway['max'] * 1e6:.0f}; goal ≤ 1 ms)")
    print(f"gateway adds to TTFT, SmolLM2, {len(paired)} pairs: median {ms(statistics.median(paired))} ms "
          f"(min {ms(min(paired))}, max {ms(max(paired))}: the model's own spread)")
    print(f"cold start adds to TTFT (medians): {ms(cold_added)} ms (goal ≤ 100 ms); the instance's "
          f"start → ready: median {ms(ready['median'])} ms (min {ms(ready['min'])}, max "
          f"{ms(ready['max'])}), of which fork {ms(fork['median'])} ms")
    print(f"thaw adds to TTFT (medians): {ms(thaw_added)} ms")
    results["gateway_added_ttft_s"] = gateway
    results["gateway_added_ttft_smollm2_s"] = summary(paired)
    results["cold_start_to_ready_s"] = ready
    results["cold_added_ttft_s"] = cold_added
    results["thaw_added_ttft_s"] = thaw_added
    if load:
        print(f"\nseed 004 load test: hey -z {args.load_s}s -c 5, /v1/chat/completions, max_tokens 10")
        print(load.get("skipped") or load["hey"])
        if "timeline" in load:
            print(f"instances started by the autoscaler: {load['instances_started']} "
                  f"(most live at once: {load['max_instances_live']})")
            print("  t (s) → live / ready: " + ", ".join(f"{t}:{n}/{r}" for t, n, r in load["timeline"][::4]))
        results["load"] = load
    print(f"\nwrote {write_json('llm', results)}")


if __name__ == "__main__":
    main()
