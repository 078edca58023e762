"""bench/replay's Ray Serve case: the same arrivals, open loop over HTTP, to Ray Serve 2.60.

The deployment is ``replay_sleep`` of ``bench/ray_apps.py``: each request sleeps its ``sleep_s``, one
at a time per replica (``max_ongoing_requests=1``), autoscaling tuned as ``REPLAY_AUTOSCALING`` there
says (and why). Ray runs in its own venv (``bench/ray_peer.py``: 2 CPUs, a 200 MB object store, no
dashboard, all on 127.0.0.1).

Replica-seconds are Ray's own view: a thread asks the agent for ``serve.status()`` every
``POLL_S`` and counts the app's replicas in every state (starting, running, stopping: each is a
process); the count holds from one answer to the next, and the sum of count × seconds over the
window is the case's instance-seconds. Starts are the count's rises between answers (a replica
started and stopped within one poll is missed). Ray does not say which requests waited for a
replica start, so the case has no cold-start count.
"""

from __future__ import annotations

import threading
import time

from bench.harness import free_port
from bench.ray_peer import RAY_VERSION, RayServe, ensure_ray_venv
from bench.replay import Result, replay_open_loop

APP = "replay_sleep"
POLL_S = 0.25


def replica_seconds(samples: list[tuple[float, int]], t0: float, t_end: float) -> float:
    """Seconds × replicas over [t0, t_end) of a step function: each (time, count) sample's count holds
    until the next sample's time (the last one's until ``t_end``); before the first sample, nothing."""
    total = 0.0
    for (at, count), (until, _) in zip(samples, [*samples[1:], (t_end, 0)], strict=False):
        total += count * max(0.0, min(until, t_end) - max(at, t0))
    return total


def replica_starts(samples: list[tuple[float, int]], t0: float) -> int:
    """Replicas started from ``t0`` on, as the rises of the sampled count (the sample before ``t0``
    is the starting level)."""
    before = [count for at, count in samples if at < t0]
    level = before[-1] if before else 0
    starts = 0
    for at, count in samples:
        if at >= t0:
            starts += max(0, count - level)
            level = count
    return starts


class ReplicaSampler:
    """Polls the app's replica count (all states) every ``poll_s`` on a thread until ``stop()``."""

    def __init__(self, ray_serve: RayServe, poll_s: float = POLL_S) -> None:
        self.ray_serve = ray_serve
        self.poll_s = poll_s
        self.samples: list[tuple[float, int]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = time.time()
            try:
                status = self.ray_serve.status()
            except Exception:  # a missed poll is counted and reported, not fatal
                status = {"status": "ERROR"}
            replicas = status.get("replicas", {})
            if status.get("status") == "ERROR":
                self.errors += 1
            else:
                # the count seen at the middle of the round trip
                self.samples.append(((asked + time.time()) / 2,
                                     sum(int(n) for n in replicas.values())))
            self._stop.wait(max(0.0, self.poll_s - (time.time() - asked)))


def run_ray_case(arrivals: list[tuple[float, float]], window_s: float,
                 case: str = "ray_serve_tuned") -> Result | str:
    """Replay ``arrivals`` against Ray Serve; the Result, or why Ray could not run (a line)."""
    python = ensure_ray_venv()
    if python is None:
        return "the Ray venv could not be installed (see above)"
    try:
        with RayServe(APP, free_port(), python=python) as ray_serve:
            minimum = int(ray_serve.autoscaling.get("min_replicas", 0))
            deadline = time.monotonic() + 60
            while ray_serve.replicas() != minimum and time.monotonic() < deadline:
                time.sleep(0.25)  # back at its minimum before the window
            sampler = ReplicaSampler(ray_serve)
            sampler.start()
            try:
                t0, out = replay_open_loop(f"http://127.0.0.1:{ray_serve.port}", f"/{APP}", arrivals)
                t_end = t0 + window_s
                time.sleep(max(0.0, t_end + POLL_S - time.time()))
            finally:
                sampler.stop()
            config = dict(ray_serve.autoscaling)
    except Exception as error:  # any failure: the torpor cases' results are kept; the reason is printed
        return f"Ray Serve failed: {type(error).__name__}: {error}"
    policy = (f"Ray Serve {RAY_VERSION}, max_ongoing_requests 1, "
              + ", ".join(f"{k} {v}" for k, v in config.items()))
    if sampler.errors:
        policy += f"; {sampler.errors} status polls failed"
    return Result(case, [lat for lat, code, _ in out if code == 200],
                  sum(1 for _, code, _ in out if code != 200), None,
                  replica_starts(sampler.samples, t0), replica_seconds(sampler.samples, t0, t_end),
                  window_s, sum(min(s, window_s - at) for at, s in arrivals if at < window_s),
                  policy)

