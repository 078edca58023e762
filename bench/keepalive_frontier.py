"""Issue 18's second goal, in the simulator: can any keep-alive rule take fewer cold starts *and*
waste fewer instance-seconds than the industry's fixed 10-minute keep-alive on the Alibaba trace?

    .venv/bin/python -m bench.keepalive_frontier [--model M0002] [--compress 288]
                                                 [--days 2024-12-03,2024-12-02,2024-11-28]

The trace is read as ``bench.replay --alibaba`` reads it (one model's requests over a day, arrival
offsets and exec times divided by ``--compress``; 10 minutes ÷ 288 = 2.08 s). Two parts per day:

1. **The simulator** (:class:`torpor.sim.engine.FunctionSim`: torpor's own policy, planner and
   routing on a FakeClock, 20 ms cold starts): a fixed keep-alive per instance swept over
   ``FIXED_S`` (the frontier it traces: each longer one trades wasted seconds for cold starts),
   and the default ``auto`` with and without idle mode. Cold = requests that waited for a cold
   start; wasted = instance-seconds minus the requests' busy seconds, frozen ones counted in full.
2. **The idle-spell model** of per-rank keep-alives (an estimate, not a proof: it holds while a
   higher rank's hold is not longer than a lower one's, and it drops each level's last open
   spell): with requests packed
   onto the earliest instance (torpor's routing) the k-th instance is idle exactly while fewer than
   k requests are in the system, so its idle spells are level k's
   (``ConcurrencyRecorder.idle_spells``). Kept K after it idles, it costs min(spell, K) wasted
   seconds and one cold start when the spell is longer than K. Evaluated there: the fixed K; the
   best K per rank chosen *with hindsight* (minimising wasted + λ × cold, λ the price of a cold
   start in instance-seconds); the same per rank *and per hour of the day* (hindsight of how
   traffic changes over the day); and two rules a policy can run: each rank's K chosen by expected
   cost over its own last ``n`` spells (the fixed K until 10 are seen), and over the same rank's
   spells in the same hour of the previous ``HISTORY_DAYS`` days (time-of-day histograms; the
   fixed K where fewer than 5).

A rule "wins" on a day when it has fewer cold starts and fewer wasted seconds than the fixed 10
minutes in the same model; the last column says so.
"""

from __future__ import annotations

import argparse
import bisect
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from bench.replay import ALIBABA, INDUSTRY_KEEP_ALIVE_S, load_alibaba
from torpor.sim.engine import FunctionSim, Timings
from torpor.sim.traces import FunctionTrace
from torpor.spec import FunctionSpec

FIXED_S = (0.5, 0.75, 1.0, 1.5, 3.0)  # fixed keep-alives swept beside the 10 minutes (compressed)
PRICES = (2.0, 3.0, 4.0)  # λ: instance-seconds one cold start is worth, for the cost rules
RECENT = (50, 200)  # the online rule's spells per rank
HOURS = 24  # the hindsight-per-hour rule's segments of the window
COLD_START_S = 0.02  # torpor's, measured (not compressed)
MIN_SPELLS = 10  # the online rule keeps the fixed K until a rank has seen this many spells
HISTORY_DAYS = 3  # the time-of-day rule learns from this many days before the one replayed

Rule = Callable[[int, Sequence[float], float], float]  # (rank, its spells so far, now) → K


@dataclass(frozen=True)
class Outcome:
    cold: int
    wasted_s: float
    starts: int | None = None  # the simulator's instance starts (the model has none)
    frozen_s: float = 0.0

    def beats(self, other: Outcome) -> bool:
        return self.cold < other.cold and self.wasted_s < other.wasted_s


def simulate(rows: list[tuple[float, float]], window_s: float, scaling: dict[str, Any]) -> Outcome:
    """One run of torpor's simulator over ``rows`` (arrival, service), billed over the window."""
    spec = FunctionSpec.model_validate({
        "name": "f", "runtime": {"handler": "m:f"}, "concurrency": 1,
        "scaling": {"max_instances": 10, **scaling},
        "queue": {"max_queued": 1000, "timeout_s": 60}, "timeout_s": 3600})
    trace = FunctionTrace(array("d", [a for a, _ in rows]), array("d", [s for _, s in rows]))
    result = FunctionSim("f", spec, trace, Timings(cold_start_s=COLD_START_S), end_s=window_s).run()

    def seconds(frozen_only: bool) -> float:
        return sum((min(iv.end if iv.end is not None else window_s, window_s) - max(iv.start, 0.0)
                    for iv in result.intervals if not frozen_only or iv.state.value == "frozen"), 0.0)

    busy = sum(min(s, window_s - a) for a, s in rows if a < window_s)
    return Outcome(result.cold_start_requests, seconds(False) - busy, result.cold_starts,
                   seconds(True))


def idle_spells(rows: list[tuple[float, float]]) -> dict[int, list[tuple[float, float]]]:
    """Per level k ≥ 1, its idle spells in time order as (start, length): from the system dropping
    below k requests to reaching k again. E.g. requests (0, 1 s) and (3, 1 s): level 1 idles
    1 → 3, one spell (1.0, 2.0)."""
    events = sorted([(a, 1) for a, _ in rows] + [(a + s, -1) for a, s in rows])
    level, below_since = 0, {}
    spells: dict[int, list[tuple[float, float]]] = {}
    for t, step in events:
        if step < 0:
            below_since[level] = t
            level -= 1
            continue
        level += 1
        since = below_since.pop(level, None)
        if since is not None:
            spells.setdefault(level, []).append((since, t - since))
    return spells


def cost_optimal_keep(spells: Sequence[float], price: float) -> float:
    """The K minimising Σ min(spell, K) + price × #(spell > K) over ``spells``: it is 0 or one of
    them. E.g. spells 0.1, 0.2, 5 at price 1 → 0.2 (0.3 wasted + 1 cold) beats 0 (3 colds) and
    5 (5.3 wasted)."""
    ordered = sorted(spells)
    prefix = [0.0]
    for x in ordered:
        prefix.append(prefix[-1] + x)
    best_k, best_cost = 0.0, price * len(ordered)
    for k in ordered:
        longer = len(ordered) - bisect.bisect_right(ordered, k)
        cost = prefix[-1 - longer] + (k + price) * longer
        if cost < best_cost - 1e-12:
            best_k, best_cost = k, cost
    return best_k


def evaluate(spells: dict[int, list[tuple[float, float]]], rule: Rule) -> Outcome:
    """The model's cold starts and wasted seconds when each rank's instance is kept ``rule`` after
    it idles (the rule sees that rank's spells before this one)."""
    cold, wasted = 0, 0.0
    for rank, timed in spells.items():
        seen: list[float] = []
        for start, length in timed:
            keep = rule(rank, seen, start)
            cold += length > keep
            wasted += min(length, keep)
            seen.append(length)
    return Outcome(cold, wasted)


def hindsight(spells: dict[int, list[tuple[float, float]]], price: float,
              segment_s: float | None) -> Outcome:
    """The best K per rank (and per ``segment_s`` of the window, if given), chosen knowing every
    spell: what no online rule can beat with constant (or hourly) keep-alives."""
    chosen: dict[tuple[int, int], float] = {}
    groups: dict[tuple[int, int], list[float]] = {}
    for rank, timed in spells.items():
        for start, length in timed:
            key = (rank, int(start // segment_s) if segment_s else 0)
            groups.setdefault(key, []).append(length)
    for key, lengths in groups.items():
        chosen[key] = cost_optimal_keep(lengths, price)
    return evaluate(spells, lambda rank, _seen, now: chosen[
        (rank, int(now // segment_s) if segment_s else 0)])


def online(price: float, recent: int, fixed_s: float) -> Rule:
    """Each rank's K by expected cost over its own last ``recent`` spells (fixed_s before
    MIN_SPELLS of them)."""
    def rule(_rank: int, seen: Sequence[float], _now: float) -> float:
        if len(seen) < MIN_SPELLS:
            return fixed_s
        return cost_optimal_keep(seen[-recent:], price)
    return rule


def time_of_day(history: list[dict[int, list[tuple[float, float]]]], price: float,
                segment_s: float, fixed_s: float) -> Rule:
    """Each rank's K by expected cost over that rank's spells in the same ``segment_s`` of the
    earlier days in ``history`` (fixed_s where they hold fewer than 5)."""
    pooled: dict[tuple[int, int], list[float]] = {}
    for spells in history:
        for rank, timed in spells.items():
            for start, length in timed:
                pooled.setdefault((rank, int(start // segment_s)), []).append(length)
    chosen = {key: cost_optimal_keep(lengths, price) for key, lengths in pooled.items()
              if len(lengths) >= 5}
    return lambda rank, _seen, now: chosen.get((rank, int(now // segment_s)), fixed_s)


def day_rows(rows: list[tuple[float, float]], window_s: float, fixed_s: float,
             history: list[dict[int, list[tuple[float, float]]]]) -> list[list[Any]]:
    """[part, rule, cold, starts, wasted, frozen, wins] for one day; ``history``: the idle spells
    of the days before it."""
    out: list[list[Any]] = []
    base = simulate(rows, window_s, {"policy": "keepalive", "keep_alive_s": round(fixed_s, 3)})

    def add(part: str, rule: str, o: Outcome, ref: Outcome) -> None:
        out.append([part, rule, o.cold, "" if o.starts is None else o.starts, round(o.wasted_s),
                    round(o.frozen_s), "yes" if o.beats(ref) else ""])

    add("sim", f"fixed {fixed_s:.2f} s (10 min)", base, base)
    for k in FIXED_S:
        add("sim", f"fixed {k:g} s", simulate(rows, window_s, {"policy": "keepalive",
                                                              "keep_alive_s": k}), base)
    add("sim", "auto (default)", simulate(rows, window_s, {"policy": "auto"}), base)
    add("sim", "auto + idle_mode", simulate(rows, window_s, {"policy": "auto", "idle_mode": True}),
        base)
    spells = idle_spells(rows)
    ref = evaluate(spells, lambda _r, _s, _t: fixed_s)
    add("model", f"fixed {fixed_s:.2f} s (10 min)", ref, ref)
    for price in PRICES:
        add("model", f"hindsight per rank, λ {price:g}", hindsight(spells, price, None), ref)
        add("model", f"hindsight per rank per hour, λ {price:g}",
            hindsight(spells, price, window_s / HOURS), ref)
        for recent in RECENT:
            add("model", f"online last {recent} spells, λ {price:g}",
                evaluate(spells, online(price, recent, fixed_s)), ref)
        add("model", f"same hour, {len(history)} days before, λ {price:g}",
            evaluate(spells, time_of_day(history, price, window_s / HOURS, fixed_s)), ref)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="M0002")
    parser.add_argument("--days", default="2024-12-03,2024-12-02,2024-11-28")
    parser.add_argument("--compress", type=float, default=288.0)
    args = parser.parse_args()
    fixed_s = INDUSTRY_KEEP_ALIVE_S / args.compress
    window_s = 24 * 3600 / args.compress
    for day in filter(None, args.days.split(",")):
        rows = load_alibaba(ALIBABA, args.model, day, 24, args.compress)
        before = [(date.fromisoformat(day) - timedelta(days=n)).isoformat()
                  for n in range(1, HISTORY_DAYS + 1)]
        history = [idle_spells(load_alibaba(ALIBABA, args.model, d, 24, args.compress))
                   for d in before]
        print(f"\n{args.model} {day}: {len(rows)} requests, ×{args.compress:g} → {window_s:g} s, "
              f"busy {sum(s for _, s in rows):.0f} s")
        print(f"{'part':<6} {'rule':<38} {'cold':>5} {'starts':>6} {'wasted':>7} {'frozen':>6} "
              f"{'wins':>5}")
        for part, rule, cold, starts, wasted, frozen, wins in day_rows(rows, window_s, fixed_s, history):
            print(f"{part:<6} {rule:<38} {cold:>5} {starts!s:>6} {wasted:>7} {frozen:>6} {wins:>5}")


if __name__ == "__main__":
    main()
