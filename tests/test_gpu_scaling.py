"""Scaling on GPU utilisation: the spec's gpu_utilization metric and provision.json's GPU policies."""

from __future__ import annotations

from typing import Any

from torpor.autoscaling import autoscaler
from torpor.autoscaling.autoscaler import AutoscalerState, GpuSignal, gpu_desired
from torpor.autoscaling.kpa import KpaConfig
from torpor.autoscaling.metrics import ConcurrencyRecorder
from torpor.autoscaling.scaling_policies import (
    PolicyInputs,
    PolicyState,
    ProvisionConfig,
    parse_provision_config,
    provisioned_target,
    to_fc_json,
)
from torpor.placement.gpus import GpuSample, Placement, function_load
from torpor.spec import ScalingSpec

NOW = 1_720_612_800.0  # 2024-07-10T12:00:00Z


def decide_with_gpu(ready: int, gpu: GpuSignal | None, load: int = 0) -> autoscaler.ScaleDecision:
    """One decision with ``load`` requests in the system for a minute on ``ready`` instances."""
    recorder = ConcurrencyRecorder()
    for second in range(61):
        recorder.record(NOW - 60 + second, load)
    decision, _ = autoscaler.decide(
        KpaConfig.from_spec(ScalingSpec(target_utilization=1.0), concurrency=1),
        ProvisionConfig(), recorder, concurrency=1, ready=ready, current_provisioned=0,
        now=NOW, state=AutoscalerState(), gpu=gpu)
    return decision


class TestGpuDesired:
    def test_hpa_rule(self) -> None:
        """2 instances at 80 % for a 50 % target need ceil(3.2) = 4."""
        assert gpu_desired(2, 80, 50) == (4, "GPU utilisation 80% on 2 instances, target 50% → 4")

    def test_exact_multiple(self) -> None:
        """3 instances exactly at target stay 3."""
        assert gpu_desired(3, 50, 50)[0] == 3

    def test_busy_gpus_scale_out_past_the_kpa(self) -> None:
        """One request in flight asks the KPA for 1; a GPU at 90 % for 50 % asks for 2: 2 wins."""
        decision = decide_with_gpu(1, GpuSignal(90, 50), load=1)
        assert decision.desired == 2
        assert decision.reason.startswith("GPU utilisation 90% on 1 instances, target 50% → 2")

    def test_idle_gpus_leave_the_kpa_in_charge(self) -> None:
        """At 10 % the GPU asks for fewer than the KPA: the KPA's count stands."""
        assert decide_with_gpu(2, GpuSignal(10, 50), load=2).desired == 2

    def test_no_target_means_no_gpu_scaling(self) -> None:
        """A signal without a target (concurrency scaling) never adds instances."""
        assert decide_with_gpu(1, GpuSignal(100, None), load=1).desired == 1


class TestFunctionLoad:
    def test_mean_over_devices_each_once(self) -> None:
        """Two slices on gpu 0 and one on gpu 1: the mean of the two devices, not of three."""
        placements = [Placement("local", (0,), 6144), Placement("local", (0,), 6144),
                      Placement("local", (1,), 6144)]
        samples = {0: GpuSample(0, 90, 8192), 1: GpuSample(1, 30, 4096)}
        load = function_load(placements, samples, {0: 16384, 1: 16384})
        assert load is not None
        assert (load.utilization_pct, load.memory_fraction, load.devices) == (60, 0.375, 2)

    def test_nothing_sampled(self) -> None:
        """No sample for its devices: no load (scaling falls back to requests)."""
        assert function_load([Placement("local", (0,), 6144)], {}, {0: 16384}) is None


class TestProvisionPolicies:
    def fc_policy(self, **overrides: Any) -> dict[str, Any]:
        return {"targetTrackingPolicies": [{
            "name": "gpu", "metricType": "GPUMemUtilization", "metricTarget": 0.6,
            "minCapacity": 1, "maxCapacity": 10, **overrides}]}

    def test_fc_gpu_metric_round_trips(self) -> None:
        """FC's GPUMemUtilization is read and written back as FC spells it."""
        config = parse_provision_config(self.fc_policy(), "provision.json")
        assert config.target_tracking[0].metric == "gpu_memory_utilization"
        assert to_fc_json(config)["targetTrackingPolicies"][0]["metricType"] == "GPUMemUtilization"

    def test_sizes_the_pool_on_gpu_memory(self) -> None:
        """2 provisioned at 0.9 memory utilisation for a 0.6 target → ceil(3.0) = 3."""
        config = parse_provision_config(self.fc_policy(), "provision.json")
        inputs = PolicyInputs(in_system=0, current_provisioned=2, concurrency=1,
                              gpu_memory_utilization=0.9)
        decision, _ = provisioned_target(config, inputs, NOW, PolicyState())
        assert decision.target == 3
        assert decision.reason == ("target tracking 'gpu': 2 × 0.9 gpu_memory_utilization ÷ 0.6 "
                                   "→ 3")

    def test_sm_utilisation_policy_without_samples_holds(self) -> None:
        """Before any GPU sample the pool stays as it is (within min/max)."""
        config = parse_provision_config(self.fc_policy(metricType="GPUUtilization"), "p.json")
        inputs = PolicyInputs(in_system=0, current_provisioned=2, concurrency=1)
        decision, _ = provisioned_target(config, inputs, NOW, PolicyState())
        assert decision.target == 2

    def test_utilisation_target_is_a_fraction(self) -> None:
        """metricTarget 50 for a GPU utilisation is refused: 0.5 means 50 %."""
        from torpor.errors import SpecError

        try:
            parse_provision_config(self.fc_policy(metricTarget=50), "provision.json")
        except SpecError as exc:
            assert exc.errors == ["targetTrackingPolicies.0.metricTarget: is a utilisation, at "
                                  "most 1 (0.3 means 30 %), got 50"]
        else:
            raise AssertionError("metricTarget 50 was accepted")
