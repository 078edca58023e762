"""The simulator on tiny traces whose every second is worked out by hand.

Unless a test says otherwise: one request at a time per instance, target utilisation 1 (one request
in the system is one instance), a 6 s stable window, a decision every second, and timings with no
noise (cold start 0.5 s, stop, freeze and gateway overhead 0, reconciler passes at once).
"""

from __future__ import annotations

import gc
from array import array
from dataclasses import fields
from decimal import Decimal as D
from typing import Any

import pytest

from torpor.lifecycle.state import InstanceState
from torpor.metering.billing import LedgerInterval
from torpor.metering.prices import PriceTable
from torpor.sim import runner
from torpor.sim.engine import FunctionSim, Timings
from torpor.sim.traces import FunctionTrace, Trace

EXACT = Timings(cold_start_s=0.5, thaw_s=0.1, freeze_s=0.0, stop_s=0.0, overhead_s=0.0, pass_delay_s=0.0)
GPU_ONLY = PriceTable(cpu_per_vcpu_s=0, cpu_idle_per_vcpu_s=0, memory_per_gb_s=0, memory_idle_per_gb_s=0)


def make_spec(**scaling: Any) -> dict[str, Any]:
    return {
        "name": "fn",
        "runtime": {"command": ["serve"]},
        "concurrency": 1,
        "timeout_s": 86_400,
        "scaling": {"policy": "kpa", "target_utilization": 1.0, "stable_window_s": 6, "tick_s": 1,
                    "scale_to_zero_grace_s": 0, "max_instances": 10, **scaling},
    }


def make_trace(*requests: tuple[float, float], name: str = "fn") -> Trace:
    """(arrival s, service s) pairs, in order."""
    fn = FunctionTrace(array("d", [a for a, _ in requests]), array("d", [s for _, s in requests]))
    return Trace({name: fn}, "test", "torpor", "given")


def run(trace: Trace, spec: dict[str, Any], timings: Timings = EXACT, **kwargs: Any) -> runner.RunResult:
    return runner.simulate(trace, runner.validate_spec(spec, "test"), timings=timings,
                           prices=kwargs.pop("prices", PriceTable()), **kwargs)


def seconds(result: runner.RunResult) -> dict[str, float]:
    return {state: float(value) for state, value in result.state_seconds().items()}


class TestOneRequest:
    def test_cold_start_then_scale_to_zero(self) -> None:
        """Arrives at 0 with nothing running: waits the 0.5 s cold start, runs 1 s (latency 1.5 s).
        Knative's sequence: the function is active from the t=1 tick (its instance ready), keeps 1
        until active for the 6 s window (t=7: marked inactive), and goes to zero on the next tick
        (t=8; grace 0): ready 0.5 → 8."""
        result = run(make_trace((0.0, 1.0)), make_spec())
        data = result.to_json()
        assert data["latency_s"] == {"p50": 1.5, "p90": 1.5, "p99": 1.5}
        assert (data["cold_starts"], data["cold_start_requests"], data["queued"]) == (1, 1, 1)
        assert seconds(result) == {"starting": 0.5, "ready": 7.5}
        assert result.duration_s == 8.0

    def test_quiet_period_crossing_the_grace(self) -> None:
        """target_burst_capacity 0 (the gateway queue out of the path while the instance is wanted):
        inactive at 7, the idle instance is kept for the 30 s grace, gone at the t=37 tick."""
        result = run(make_trace((0.0, 1.0)),
                     make_spec(scale_to_zero_grace_s=30, target_burst_capacity=0))
        assert seconds(result) == {"starting": 0.5, "ready": 36.5}

    def test_grace_already_served_with_the_queue_in_the_path(self) -> None:
        """The default burst capacity keeps the gateway queue in the path throughout, so the grace
        counts as served (Knative's activator): zero at the t=8 tick, as with no grace."""
        result = run(make_trace((0.0, 1.0)), make_spec(scale_to_zero_grace_s=30))
        assert seconds(result) == {"starting": 0.5, "ready": 7.5}

    def test_a_second_request_inside_the_grace_is_warm(self) -> None:
        """Burst capacity 0: at 20 the instance kept for the grace answers at once (1 cold start,
        latencies 1.5 and 1.0 s); active again from 20, inactive at 26, gone 30 s later at 56."""
        result = run(make_trace((0.0, 1.0), (20.0, 1.0)),
                     make_spec(scale_to_zero_grace_s=30, target_burst_capacity=0))
        data = result.to_json()
        assert data["cold_starts"] == 1
        assert sorted(result.latencies_s) == [1.0, 1.5]
        assert seconds(result) == {"starting": 0.5, "ready": 55.5}


class TestBurst:
    def test_panic_then_rate_limited_scale_down(self) -> None:
        """Four requests at 0 start four instances (panic: 4 wanted over 0 ready). Panic holds 4 until
        it has been calm for a stable window (t=7); then the scale-down rate of 2 halves the fleet
        each second: 4 → 2 at 7, → 1 at 8; the last one goes inactive at 9 (0 asked for, active
        since the t=1 tick for more than the window) and to zero at 10. Instance-seconds
        7 + 7 + 8 + 10 = 32."""
        result = run(make_trace(*[(0.0, 1.0)] * 4), make_spec())
        data = result.to_json()
        assert data["cold_starts"] == 4
        assert data["latency_s"] == {"p50": 1.5, "p90": 1.5, "p99": 1.5}
        assert result.instance_seconds() == D(32)

    def test_max_instances_queues_the_rest(self) -> None:
        """Two instances at most: the third and fourth wait one service time (latency 2.5 s)."""
        result = run(make_trace(*[(0.0, 1.0)] * 4), make_spec(max_instances=2))
        assert sorted(result.latencies_s) == [1.5, 1.5, 2.5, 2.5]

    def test_full_queue_rejects(self) -> None:
        """queue.max_queued 2: of four requests arriving at zero instances, two are rejected (503)."""
        spec = {**make_spec(), "queue": {"max_queued": 2, "timeout_s": 30}}
        data = run(make_trace(*[(0.0, 1.0)] * 4), spec).to_json()
        assert (data["answered"], data["rejected"]) == (2, 2)

    def test_queue_timeout(self) -> None:
        """A cold start longer than queue.timeout_s: the request times out (504), none answered."""
        spec = {**make_spec(), "queue": {"max_queued": 10, "timeout_s": 0.2}}
        data = run(make_trace((0.0, 1.0)), spec).to_json()
        assert (data["answered"], data["timed_out"]) == (0, 1)

    def test_function_timeout_keeps_the_slot(self) -> None:
        """timeout_s 1, one instance: A (service 3 s) gets 504 at 1.5 but holds the instance until
        3.5; B arriving at 2 waits for it and is answered at 3.6 (latency 1.6 s), as the gateway."""
        spec = {**make_spec(max_instances=1), "timeout_s": 1}
        result = run(make_trace((0.0, 3.0), (2.0, 0.1)), spec)
        data = result.to_json()
        assert (data["answered"], data["timed_out"]) == (1, 1)
        assert result.latencies_s == pytest.approx([1.6])


class TestKnativeKnobs:
    @pytest.mark.parametrize(("burst_capacity", "queued"), [(211, 3), (0, 1)])
    def test_burst_capacity_decides_where_requests_wait(self, burst_capacity: int, queued: int) -> None:
        """One instance at most, three requests at 2 s. The default burst capacity keeps the gateway
        queue in the path: two of them queue there (3 with the first, at zero). Burst capacity 0
        takes it out from the t=0 decision on: all three go to the instance and wait there in turn
        (only the first queued: nothing was ready). Same latencies: 1.5 (cold), then 1, 2, 3."""
        result = run(make_trace((0.0, 1.0), *[(2.0, 1.0)] * 3),
                     make_spec(max_instances=1, target_burst_capacity=burst_capacity))
        assert result.to_json()["queued"] == queued
        assert sorted(result.latencies_s) == [1.0, 1.5, 2.0, 3.0]

    def test_timeout_counts_the_wait_at_the_instance(self) -> None:
        """Burst capacity 0, timeout_s 1.5: of three requests sent to the one instance at 2 s, the
        second and third wait 1 and 2 s there before their 1 s runs: past 1.5 s, 504 (their slots
        held until they end); the first request and the one run at once are answered."""
        spec = {**make_spec(max_instances=1, target_burst_capacity=0), "timeout_s": 1.5}
        data = run(make_trace((0.0, 1.0), *[(2.0, 1.0)] * 3), spec).to_json()
        assert (data["answered"], data["timed_out"]) == (2, 2)


class TestKeepAlivePolicy:
    def test_fixed_keep_alive(self) -> None:
        """scaling.keep_alive_s 2: the instance of the request at 0 (ready 0.5, idle from 1.5) is
        kept through the one at 2.5 (warm, idle from 3.5) and drained at 5.5, when its own
        keep-alive ends; the request at 7 starts another (2 cold starts), drained at 10.5."""
        result = run(make_trace((0.0, 1.0), (2.5, 1.0), (7.0, 1.0)),
                     make_spec(policy="keepalive", keep_alive_s=2))
        assert result.to_json()["cold_starts"] == 2
        assert sorted(result.latencies_s) == [1.0, 1.5, 1.5]
        assert seconds(result) == {"starting": 1.0, "ready": 8.0}  # 0.5 → 5.5, 7.5 → 10.5

    def test_keep_alive_from_the_simulated_cold_start(self) -> None:
        """Unfixed, the keep-alive is 10 × the measured cold start, as in the server: 10 × 0.5 s =
        5 s once the first instance is ready; the function's last instance keeps the 6 s stable
        window until 10 idle spells are known, so the request at 7 is warm and the instance, idle
        from 8, is drained at 14."""
        result = run(make_trace((0.0, 1.0), (2.5, 1.0), (7.0, 1.0)), make_spec(policy="keepalive"))
        assert result.to_json()["cold_starts"] == 1
        assert sorted(result.latencies_s) == [1.0, 1.0, 1.5]
        assert seconds(result) == {"starting": 0.5, "ready": 13.5}

    @pytest.mark.parametrize(("cold_start_s", "runs", "latencies", "seconds_"), [
        (0.5, "keepalive", [1.0, 1.0, 1.5], {"starting": 0.5, "ready": 13.5}),
        (2.0, "kpa", [1.0, 1.5, 3.0], {"starting": 4.0, "ready": 17.5}),
    ])
    def test_auto_picks_by_the_cold_start(self, cold_start_s: float, runs: str,
                                          latencies: list[float], seconds_: dict[str, float]) -> None:
        """The default, auto, runs exactly what the policy it picks runs: with 0.5 s cold starts
        (at most 1 s) the keep-alive policy (drained at 14, as above); with 2 s ones the KPA (the
        first request waits the 2 s start, the one at 2.5 waits behind it, and the KPA's panic
        starts a second instance)."""
        timings = Timings(cold_start_s=cold_start_s, thaw_s=0.1, freeze_s=0.0, stop_s=0.0,
                          overhead_s=0.0, pass_delay_s=0.0)
        trace = make_trace((0.0, 1.0), (2.5, 1.0), (7.0, 1.0))
        auto = make_spec()
        auto["scaling"].pop("policy")
        for spec in (auto, make_spec(policy=runs)):
            result = run(trace, spec, timings)
            assert sorted(result.latencies_s) == latencies
            assert seconds(result) == seconds_


class TestLedger:
    def test_rows_are_the_billing_codes_own_intervals(self) -> None:
        """One request at 0 for 1 s, keep-alive 1 s, stop 0.25 s: starting 0 → 0.5, ready 0.5 →
        2.5 (idle from 1.5 for the keep-alive), draining 2.5 → 2.75. Each row is what
        ``LedgerInterval``'s own constructor makes of the same fields, field for field."""
        spec = runner.validate_spec(make_spec(policy="keepalive", keep_alive_s=1), "test")
        timings = Timings(cold_start_s=0.5, thaw_s=0.0, freeze_s=0.0, stop_s=0.25, overhead_s=0.0,
                          pass_delay_s=0.0)
        trace = make_trace((0.0, 1.0))
        result = FunctionSim("fn", spec, trace.functions["fn"], timings, end_s=20.0).run()
        info = ("fn-1", "fn", "1", "local", "cpu", 0, 1.0, 1024)
        assert result.intervals == [
            LedgerInterval(*info, InstanceState.STARTING, 0.0, 0.5),
            LedgerInterval(*info, InstanceState.READY, 0.5, 2.5),
            LedgerInterval(*info, InstanceState.DRAINING, 2.5, 2.75),
        ]
        for row in result.intervals:
            assert type(row) is LedgerInterval
            assert vars(row) == vars(LedgerInterval(**vars(row)))
            assert list(vars(row)) == [f.name for f in fields(LedgerInterval)]


    @pytest.mark.parametrize("collecting", [True, False])
    def test_the_garbage_collector_is_left_as_it_was(self, collecting: bool) -> None:
        """A replay pauses the cyclic collector while it runs and leaves it on or off as it found
        it; once the simulator is dropped, nothing it made is left for the collector to find
        (three requests, two instances)."""
        spec = runner.validate_spec(make_spec(), "test")
        trace = make_trace((0.0, 1.0), (0.2, 1.0), (5.0, 1.0))
        sim = FunctionSim("fn", spec, trace.functions["fn"], EXACT, end_s=20.0)
        was = gc.isenabled()
        try:
            (gc.enable if collecting else gc.disable)()
            gc.collect()
            result = sim.run()
            assert gc.isenabled() is collecting
            assert (result.answered, result.cold_starts) == (3, 2)
            del sim
            assert gc.collect() == 0
        finally:
            (gc.enable if was else gc.disable)()


class TestIdleMode:
    def test_provisioned_instance_freezes_and_thaws(self) -> None:
        """Provisioned 1 with idle mode: ready at 0.5, busy until 1.5, frozen at once; the request at
        10 waits the 0.1 s thaw (latency 1.1 s, answered 'thawed'), and it freezes again at 11.1."""
        result = run(make_trace((0.0, 1.0), (10.0, 1.0)),
                     make_spec(provisioned=1, idle_mode=True, idle_after_s=0))
        data = result.to_json()
        assert sorted(result.latencies_s) == pytest.approx([1.1, 1.5])
        assert (data["thaws"], data["thawed_requests"], data["cold_starts"]) == (1, 1, 1)
        assert seconds(result) == pytest.approx({"starting": 0.5, "ready": 2.0, "frozen": 8.6})

    def test_without_idle_mode_it_stays_ready(self) -> None:
        """The same trace without idle mode: the provisioned instance is ready throughout."""
        result = run(make_trace((0.0, 1.0), (10.0, 1.0)), make_spec(provisioned=1))
        assert sorted(result.latencies_s) == [1.0, 1.5]
        assert set(seconds(result)) == {"starting", "ready"}


class TestSeedCostExamples:
    """Seed 001: one 4 GB GPU instance for 3,600 s a day costs 3,600 × 4 × 0.000018 = 0.2592; for
    50,000 s, 3.6; against 2 × 24 = 48 for an always-on GPU. Back-to-back 5 s requests (the last
    one 4 s) keep one instance busy; it goes 6 s after the last ends (the 6 s window clears 5 s
    after, that tick marks the function inactive, the next scales it to zero), so 719 requests are
    5 × 718 + 4 + 6 = 3,600 s."""

    @pytest.mark.parametrize(("requests", "cost"), [(719, D("0.2592")), (9_999, D("3.6"))])
    def test_cost_against_always_on(self, requests: int, cost: D) -> None:
        trace = make_trace(*[(5.0 * n, 5.0 if n < requests - 1 else 4.0) for n in range(requests)])
        spec = {**make_spec(), "resources": {"gpu_memory_mb": 4096}}
        result = run(trace, spec, timings=Timings(0, 0, 0, 0, 0, 0), prices=GPU_ONLY, duration_s=86_400)
        assert result.instance_seconds() == 5 * requests + 5
        assert (result.bill.cost, result.bill.always_on_cost) == (cost, 48)
        assert result.to_json()["cold_starts"] == 1


class TestCompareAndDeterminism:
    def test_what_ifs_are_the_product_of_axes(self) -> None:
        """Two axes of two values: four runs, labelled by their overrides."""
        runs = runner.run_all(make_trace((0.0, 1.0)), make_spec(), "test",
                              compare=["scaling.idle_mode=false,true", "scaling.provisioned=0,1"],
                              timings=EXACT, prices=PriceTable())
        assert [r.label for r in runs] == [
            "scaling.idle_mode=false, scaling.provisioned=0",
            "scaling.idle_mode=false, scaling.provisioned=1",
            "scaling.idle_mode=true, scaling.provisioned=0",
            "scaling.idle_mode=true, scaling.provisioned=1",
        ]

    def test_one_value_compares_with_the_spec(self) -> None:
        """--compare scaling.scale_to_zero_grace_s=30 runs the spec's 0 and 30 (burst capacity 0, so
        the grace is waited out: inactive at 7, gone at 8 or 37)."""
        runs = runner.run_all(make_trace((0.0, 1.0)), make_spec(target_burst_capacity=0), "test",
                              compare=["scaling.scale_to_zero_grace_s=30"], timings=EXACT,
                              prices=PriceTable())
        assert [r.instance_seconds() for r in runs] == [D(8), D(37)]

    def test_same_seed_same_output(self) -> None:
        """power_of_two draws at random; with the same seed two replays are identical."""
        trace = make_trace(*[(0.05 * n, 0.3 + (n % 7) * 0.1) for n in range(400)])
        spec = {**make_spec(), "routing": {"policy": "power_of_two"}}
        one, two = (run(trace, spec, seed=3).to_json() for _ in range(2))
        assert one == two
        assert run(trace, spec, seed=3).latencies_s == run(trace, spec, seed=3).latencies_s

    def test_set_rejects_a_bad_field(self) -> None:
        """--set names the field the spec rejects, as deploy would."""
        from torpor.errors import SpecError

        with pytest.raises(SpecError, match=r"scaling.max_instances: Input should be greater"):
            runner.run_all(make_trace((0.0, 1.0)), make_spec(), "test", sets=["scaling.max_instances=0"],
                           timings=EXACT, prices=PriceTable())


class TestTimings:
    def test_from_json(self, tmp_path: Any) -> None:
        """A bench's JSON sets the named timings; the rest keep their values."""
        path = tmp_path / "t.json"
        path.write_text('{"cold_start_s": 2.5, "thaw_s": 0.4}')
        assert runner.load_timings(path, EXACT) == Timings(2.5, 0.4, 0.0, 0.0, 0.0, 0.0)

    def test_from_metrics(self, tmp_path: Any) -> None:
        """A saved /metrics page: the mean of the cold-start histogram's total phase, over functions."""
        path = tmp_path / "metrics.txt"
        path.write_text(
            'torpor_cold_start_seconds_count{function="a",phase="total"} 3.0\n'
            'torpor_cold_start_seconds_sum{function="a",phase="total"} 0.09\n'
            'torpor_cold_start_seconds_sum{function="a",phase="spawn"} 5.0\n'
            'torpor_cold_start_seconds_count{function="b",phase="total"} 1.0\n'
            'torpor_cold_start_seconds_sum{function="b",phase="total"} 0.01\n')
        assert runner.load_timings(path, EXACT).cold_start_s == pytest.approx(0.025)  # 0.1 / 4

    def test_unknown_field(self, tmp_path: Any) -> None:
        from torpor.errors import SpecError

        path = tmp_path / "t.json"
        path.write_text('{"warmup_s": 1}')
        with pytest.raises(SpecError, match="warmup_s: unknown timing"):
            runner.load_timings(path, EXACT)


class TestProvisionPolicies:
    def test_target_tracking_keeps_its_minimum(self, tmp_path: Any) -> None:
        """A target-tracking policy with min capacity 1 keeps one instance all along: 100 s."""
        path = tmp_path / "provision.yaml"
        path.write_text("target_tracking:\n- {name: keep, metric: concurrency, target: 1, "
                        "min_capacity: 1, max_capacity: 3}\n")
        (result,) = runner.run_all(make_trace((0.0, 1.0)), make_spec(), "test", timings=EXACT,
                                   prices=PriceTable(), duration_s=100,
                                   provision=runner.load_provision(path))
        assert result.instance_seconds() == 100

    def test_scheduled_action_on_the_simulated_clock(self, tmp_path: Any) -> None:
        """Simulated time starts at 1970-01-01T00:00Z: an action at 00:00:50 provisions 2 from 50 s
        (the request's own instance went at 8 s): 8 + 2 × 50 = 108 instance-seconds. (A daily cron
        action would already hold at 0: its firing the day before is the latest one.)"""
        path = tmp_path / "provision.json"
        path.write_text('{"target": 0, "scheduledActions": [{"name": "morning", '
                        '"scheduleExpression": "at(1970-01-01T00:00:50Z)", "target": 2}]}')
        (result,) = runner.run_all(make_trace((0.0, 1.0)), make_spec(), "test", timings=EXACT,
                                   prices=PriceTable(), duration_s=100,
                                   provision=runner.load_provision(path))
        assert result.instance_seconds() == 108
        assert result.to_json()["cold_starts"] == 3
