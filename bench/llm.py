"""examples/chat (SmolLM2-135M on CPU): time to first token and tokens/s, warm, cold and thawed,
through torpor and straight to the instance; then seed 004's load test.

    .venv/bin/python -m bench.llm [--runs 7] [--load-s 30] [--no-load]

Every request is a streamed ``/v1/chat/completions`` (temperature 0, a fixed prompt, 32 tokens),
timed from sending to the first content event (TTFT) and to the last one (decode tokens/s).

- warm: the same instance, alternately through the gateway and straight to its Unix socket (the
  difference of the paired times is what the gateway adds to TTFT);
- cold: every run redeploys the function (its template ready, zero instances), then one request:
  fork + setup + warmup + the request;
- thawed: a provisioned instance in idle mode, frozen, woken by the request.

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


def stream_once(http: httpx.Client, path: str = "/v1/chat/completions") -> dict[str, Any]:
    """TTFT, decode tokens/s and the x-torpor-start header of one streamed chat completion."""
    started = time.perf_counter()
    first = last = None
    tokens = 0
    with http.stream("POST", path, json=BODY) as response:
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
    return {"ttft_s": first - started, "tokens_per_s": rate,
            "start": response.headers.get("x-torpor-start", "direct")}


def wait_template(server: Server, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        template = server.http.get("/api/v1/functions/chat").json()["template"]
        if template and template["state"] == "ready":
            return
        if template and template["state"] == "failed":
            raise RuntimeError(f"chat: template failed; see {template['stderr_log']}")
        time.sleep(0.05)
    raise RuntimeError("chat: template not ready")


def instances(server: Server) -> list[dict[str, Any]]:
    return [r for r in server.http.get("/api/v1/instances").json() if r["function"] == "chat"]


def warm(server: Server, runs: int) -> dict[str, list[dict[str, Any]]]:
    server.deploy(CHAT, scaling={"min_instances": 1, "max_instances": 1})
    wait_template(server)
    stream_once(server.http)  # starts the instance
    address = instances(server)[0]["address"]
    direct = httpx.Client(transport=httpx.HTTPTransport(uds=address), base_url="http://instance",
                          timeout=120)
    out: dict[str, list[dict[str, Any]]] = {"warm, through torpor": [], "warm, straight to instance": []}
    try:
        for _ in range(runs):
            out["warm, through torpor"].append(stream_once(server.http))
            out["warm, straight to instance"].append(stream_once(direct))
    finally:
        direct.close()
    server.delete("chat")
    server.wait_no_instances("chat")
    return out


def cold(server: Server, runs: int) -> list[dict[str, Any]]:
    samples = []
    for _ in range(runs + 1):  # the first pays for the page cache
        server.deploy(CHAT, scaling={"min_instances": 0, "max_instances": 1})
        wait_template(server)
        sample = stream_once(server.http)
        if sample["start"] != "cold":
            raise RuntimeError(f"expected a cold start, got {sample['start']}")
        samples.append(sample)
        server.delete("chat")
        server.wait_no_instances("chat")
    return samples[1:]


def thawed(server: Server, runs: int) -> list[dict[str, Any]]:
    server.deploy(CHAT, scaling={"provisioned": 1, "max_instances": 1, "idle_mode": True,
                                 "idle_after_s": 0.3, "tick_s": 0.5})
    wait_template(server)
    samples = []
    while len(samples) < runs:
        deadline = time.monotonic() + 30
        while not any(r["state"] == "frozen" for r in instances(server)):
            if time.monotonic() > deadline:
                raise RuntimeError("chat never froze")
            time.sleep(0.02)
        sample = stream_once(server.http)
        if sample["start"] == "thawed":
            samples.append(sample)
    server.delete("chat")
    server.wait_no_instances("chat")
    return samples


def load_test(server: Server, seconds: int) -> dict[str, Any]:
    hey = shutil.which("hey")
    if hey is None:
        return {"skipped": "hey is not installed (make bench-setup)"}
    server.deploy(CHAT, scaling={"min_instances": 0, "max_instances": 4, "target_utilization": 1.0})
    wait_template(server)
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

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    result = subprocess.run([hey, "-z", f"{seconds}s", "-c", "5", "-m", "POST", "-T", "application/json",
                             "-d", body, f"{server.url}/v1/chat/completions"],
                            capture_output=True, text=True, timeout=seconds + 120)
    done.set()
    watcher.join()
    started_ids = {r["id"] for r in server.http.get("/api/v1/instances",
                                                    params={"function": "chat", "all": True}).json()}
    server.delete("chat")
    return {"hey": result.stdout, "timeline": timeline, "instances_started": len(started_ids),
            "max_instances_live": max((t[1] for t in timeline), default=0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--load-s", type=int, default=30)
    parser.add_argument("--no-load", action="store_true", help="skip the hey load test")
    args = parser.parse_args()
    server = Server()
    try:
        by_case = warm(server, args.runs)
        by_case["cold, through torpor"] = cold(server, args.runs)
        by_case["thawed, through torpor"] = thawed(server, args.runs)
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
    gateway = [a["ttft_s"] - b["ttft_s"] for a, b in zip(by_case["warm, through torpor"],
                                                         by_case["warm, straight to instance"],
                                                         strict=True)]
    cold_added = (results["cold, through torpor"]["ttft_s"]["median"]
                  - results["warm, through torpor"]["ttft_s"]["median"])
    thaw_added = (results["thawed, through torpor"]["ttft_s"]["median"]
                  - results["warm, through torpor"]["ttft_s"]["median"])
    print(f"\ngateway adds to TTFT (paired, median): {ms(statistics.median(gateway))} ms "
          f"(goal ≤ 1 ms; min {ms(min(gateway))}, max {ms(max(gateway))})")
    print(f"cold start adds to TTFT (medians): {ms(cold_added)} ms (goal ≤ 100 ms)")
    print(f"thaw adds to TTFT (medians): {ms(thaw_added)} ms")
    results["gateway_added_ttft_s"] = summary(gateway)
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
