"""Cold start: zero instances → first response, through a real `torpor serve`.

    .venv/bin/python -m bench.coldstart [--runs 7]

Each round deploys the function afresh (so it has no instance), sends one request and times it to the
last byte; the instance's own breakdown (spawn → listening, listening → ready) comes from the API.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.harness import ROOT, Server, print_table, summary, write_json

CASES = {
    "echo": (ROOT / "examples" / "echo", {}),
    "embeddings": (ROOT / "examples" / "embeddings", {"texts": ["A man is eating food."]}),
}


def one_cold_start(server: Server, name: str, payload: Any) -> dict[str, float]:
    folder, _ = CASES[name]
    server.deploy(folder, scaling={"min_instances": 0, "max_instances": 1})
    started = time.perf_counter()
    response = server.http.post(f"/fn/{name}/invoke", json=payload)
    elapsed = time.perf_counter() - started
    if response.status_code != 200 or response.headers.get("x-torpor-start") != "cold":
        raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
    instance = response.headers["x-torpor-instance"]
    rows = {r["id"]: r for r in server.http.get("/api/v1/instances").json()}
    breakdown = rows[instance]["cold_start"]
    server.delete(name)
    server.wait_no_instances(name)
    return {"first_response_s": elapsed, "spawn_s": breakdown["spawn_s"],
            "initialize_s": breakdown["initialize_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    server = Server()
    results: dict[str, Any] = {}
    try:
        for name, (_, payload) in CASES.items():
            one_cold_start(server, name, payload)  # warm the page cache once
            runs = [one_cold_start(server, name, payload) for _ in range(args.runs)]
            results[name] = {key: summary([r[key] for r in runs]) for key in runs[0]}
    finally:
        server.close()
    rows = [(f"{name}: {key}", stats) for name, by_key in results.items()
            for key, stats in by_key.items()]
    print_table("cold start, zero instances → first response (spawn: process start → listening; "
                "initialize: /initialize)", rows)
    print(f"\nwrote {write_json('coldstart', results)}")


if __name__ == "__main__":
    main()
