"""Cold start: zero instances → first response, through a real `torpor serve`.

    .venv/bin/python -m bench.coldstart [--runs 7] [--no-ray]

For the echo handler and the embeddings model, each with templates on (forked from a snapshot) and
off (a plain process spawn + import + load): every round deploys the function afresh, so it has no
instance (with templates, the new revision's template is ready first: it exists for as long as the
function is deployed), sends one request and times it to the last byte. The instance's own breakdown
comes from the API. Ray Serve 2.60 scaling a no-op from zero runs in the same invocation (skipped
with a message if it cannot be installed). Ratios are printed.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.harness import ROOT, Server, ms, print_table, summary, write_json

CASES = {
    "echo": (ROOT / "examples" / "echo", {}),
    "embeddings": (ROOT / "examples" / "embeddings", {"texts": ["A man is eating food."]}),
}
PHASES = ("fork_s", "spawn_s", "setup_s", "initialize_s")


def one_cold_start(server: Server, name: str, payload: Any, templates: bool) -> dict[str, float]:
    folder, _ = CASES[name]
    server.deploy(folder, runtime={"templates": templates},
                  scaling={"min_instances": 0, "max_instances": 1})
    if templates:
        server.wait_template(name)
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
    sample = {"first_response_s": elapsed}
    sample.update({k: breakdown[k] for k in PHASES if breakdown.get(k) is not None})
    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Serve peer")
    args = parser.parse_args()
    server = Server()
    results: dict[str, Any] = {}
    try:
        for name, (_, payload) in CASES.items():
            for templates in (True, False):
                key = f"{name}, templates {'on' if templates else 'off'}"
                one_cold_start(server, name, payload, templates)  # page cache, imports
                runs = [one_cold_start(server, name, payload, templates) for _ in range(args.runs)]
                results[key] = {k: summary([r[k] for r in runs]) for k in runs[0]}
    finally:
        server.close()
    ray = {} if args.no_ray else _ray(args.runs)
    for variant, samples in ray.items():
        results[f"ray serve 2.60 no-op from zero, {variant}"] = {"first_response_s": summary(samples)}

    rows = [(f"{case}: {k}", stats) for case, by_key in results.items()
            for k, stats in by_key.items()]
    print_table("cold start, zero instances → first response (fork/spawn: start → listening, "
                "incl. setup; initialize: /initialize)", rows)
    first = {case: by_key["first_response_s"]["median"] for case, by_key in results.items()}
    print("\nratios of medians (first response):")
    for name in CASES:
        on, off = first[f"{name}, templates on"], first[f"{name}, templates off"]
        print(f"  {name}: templates off / on = {off / on:.1f}×  ({ms(off)} ms vs {ms(on)} ms)")
        for variant in ray:
            peer = first[f"ray serve 2.60 no-op from zero, {variant}"]
            print(f"  {name}: Ray Serve ({variant}) from zero / torpor templates on = {peer / on:.0f}×")
    print(f"\nwrote {write_json('coldstart', results)}")


def _ray(runs: int) -> dict[str, list[float]]:
    """Ray Serve's scale from zero: with its defaults (a replica starts on the proxy's next metrics
    report, every 10 s) and tuned (reports every 0.1 s), so torpor is compared with Ray at its best too.
    """
    from bench import ray_peer

    python = ray_peer.ensure_ray_venv()
    if python is None:
        return {}
    found = {}
    for variant, tuned in (("defaults", False), ("tuned", True)):
        samples = ray_peer.measure_scale_from_zero(python, runs, tuned=tuned)
        if samples:
            found[variant] = samples
    return found


if __name__ == "__main__":
    main()
