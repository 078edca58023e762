"""torpor.yaml validation: every mistake a user can make, as the exact ``field: message`` line they see.

Each case starts from a minimal valid spec (``make_spec``) and changes one thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from torpor.errors import SpecError
from torpor.spec import FunctionSpec, load_spec_file, resolve_model_path

MODEL_SOURCE = """\
import torpor


class Echo(torpor.Model):
    def predict(self, payload):
        return payload
"""
DNS_RULE = ("must be a DNS label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit")


def make_spec(tmp_path: Path, *, files: dict[str, str] | None = None, **overrides: Any) -> Path:
    """Write torpor.yaml (a minimal handler spec, top-level keys replaced by ``overrides``) and its code.

    ``files`` maps paths relative to the folder to their text; the default is ``model.py`` holding
    ``Echo``. Returns the folder, resolved, as ``load_spec_file`` reports it.
    """
    spec: dict[str, Any] = {"name": "echo", "runtime": {"handler": "model:Echo"}, **overrides}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "torpor.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    for relative, text in (files if files is not None else {"model.py": MODEL_SOURCE}).items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path.resolve()


def load(folder: Path) -> FunctionSpec:
    spec, _, _ = load_spec_file(folder)
    return spec


def spec_errors(folder: Path) -> list[str]:
    """The ``field: message`` lines a load of ``folder`` fails with."""
    with pytest.raises(SpecError) as excinfo:
        load_spec_file(folder)
    return excinfo.value.errors


class TestName:
    def test_uppercase_and_underscore_rejected(self, tmp_path: Path) -> None:
        """A name that is not a DNS label names the rule and echoes the value."""
        folder = make_spec(tmp_path, name="Echo_1")
        assert spec_errors(folder) == [f"name: {DNS_RULE} (got 'Echo_1')"]

    def test_leading_dash_rejected(self, tmp_path: Path) -> None:
        """A DNS label cannot start with '-'."""
        folder = make_spec(tmp_path, name="-echo")
        assert spec_errors(folder) == [f"name: {DNS_RULE} (got '-echo')"]

    def test_64_characters_rejected(self, tmp_path: Path) -> None:
        """A DNS label is at most 63 characters."""
        folder = make_spec(tmp_path, name="a" * 64)
        assert spec_errors(folder) == [f"name: {DNS_RULE} (got '{'a' * 64}')"]

    def test_63_characters_accepted(self, tmp_path: Path) -> None:
        """63 lowercase characters with digits and dashes inside is the longest valid name."""
        name = "a-1" + "b" * 60
        assert load(make_spec(tmp_path, name=name)).name == name

    def test_missing_name(self, tmp_path: Path) -> None:
        """A spec without a name says the field is required."""
        (tmp_path / "torpor.yaml").write_text("runtime:\n  handler: model:Echo\n")
        (tmp_path / "model.py").write_text(MODEL_SOURCE)
        assert spec_errors(tmp_path) == ["name: Field required"]


class TestAuth:
    def test_default_is_key(self, tmp_path: Path) -> None:
        """Without `auth:` a function needs an API key to be invoked."""
        assert load(make_spec(tmp_path)).auth == "key"

    def test_public(self, tmp_path: Path) -> None:
        assert load(make_spec(tmp_path, auth="public")).auth == "public"

    @pytest.mark.parametrize("value", ["open", "Key", ""])
    def test_anything_else_refused(self, tmp_path: Path, value: str) -> None:
        """Another word names both choices and what was given."""
        assert spec_errors(make_spec(tmp_path, auth=value)) == [
            "auth: must be key (invoking needs an API key of the function's tenant or an admin's) "
            f"or public (anyone may invoke it), not {value!r}"]

    def test_not_a_string_refused(self, tmp_path: Path) -> None:
        """YAML's `auth: off` is a boolean, not a mode."""
        assert spec_errors(make_spec(tmp_path, auth=False)) == ["auth: Input should be a valid string"]


class TestRuntime:
    def test_neither_handler_nor_command(self, tmp_path: Path) -> None:
        """An empty runtime asks for exactly one of handler and command."""
        folder = make_spec(tmp_path, runtime={})
        assert spec_errors(folder) == ["runtime: set exactly one of runtime.handler or runtime.command"]

    def test_both_handler_and_command(self, tmp_path: Path) -> None:
        """Handler and command together are rejected with the same line."""
        folder = make_spec(tmp_path, runtime={"handler": "model:Echo", "command": ["python", "srv.py"]})
        assert spec_errors(folder) == ["runtime: set exactly one of runtime.handler or runtime.command"]

    @pytest.mark.parametrize(
        "handler", ["model.Echo", "model:", ":Echo", "model:Echo.predict", "1model:Echo"]
    )
    def test_bad_handler_shape(self, tmp_path: Path, handler: str) -> None:
        """A handler that is not 'module:Class' echoes what was given."""
        folder = make_spec(tmp_path, runtime={"handler": handler})
        assert spec_errors(folder) == [f"runtime.handler: must look like 'module:Class', got {handler!r}"]

    def test_empty_command(self, tmp_path: Path) -> None:
        """An empty command list is rejected."""
        folder = make_spec(tmp_path, runtime={"command": []})
        assert spec_errors(folder) == ["runtime.command: must be a non-empty list of non-empty strings"]

    def test_command_with_empty_argument(self, tmp_path: Path) -> None:
        """An empty string inside the command is rejected too."""
        folder = make_spec(tmp_path, runtime={"command": ["python", ""]})
        assert spec_errors(folder) == ["runtime.command: must be a non-empty list of non-empty strings"]

    def test_port_with_handler(self, tmp_path: Path) -> None:
        """runtime.port is meaningless for a Python handler."""
        folder = make_spec(tmp_path, runtime={"handler": "model:Echo", "port": 8080})
        assert spec_errors(folder) == ["runtime: runtime.port applies only to runtime.command"]

    def test_port_with_several_instances(self, tmp_path: Path) -> None:
        """A fixed port cannot be shared by more than one instance (default max_instances is 10)."""
        folder = make_spec(tmp_path, runtime={"command": ["./serve"], "port": 8080})
        assert spec_errors(folder) == [
            "(top level): runtime.port fixes one listening port (8080), so scaling.max_instances must "
            "be 1; omit runtime.port and torpor gives each instance its own port in PORT"
        ]

    def test_port_with_one_instance_accepted(self, tmp_path: Path) -> None:
        """A fixed port with max_instances 1 is a valid command spec."""
        folder = make_spec(tmp_path, runtime={"command": ["./serve"], "port": 8080},
                           scaling={"max_instances": 1}, files={})
        spec = load(folder)
        assert (spec.kind, spec.runtime.command, spec.runtime.port) == ("command", ["./serve"], 8080)


class TestUnknownFields:
    def test_top_level(self, tmp_path: Path) -> None:
        """A misspelt top-level field is named, not silently ignored."""
        folder = make_spec(tmp_path, concurency=4)
        assert spec_errors(folder) == ["concurency: unknown field"]

    def test_nested(self, tmp_path: Path) -> None:
        """A misspelt nested field is named by its dotted path."""
        folder = make_spec(tmp_path, scaling={"foo": 1})
        assert spec_errors(folder) == ["scaling.foo: unknown field"]

    def test_every_problem_reported_at_once(self, tmp_path: Path) -> None:
        """Several mistakes come back together, one line each, so one edit fixes them all."""
        folder = make_spec(tmp_path, scaling={"foo": 1}, concurrency=0, timeout_s=-1)
        assert sorted(spec_errors(folder)) == [
            "concurrency: Input should be greater than or equal to 1",
            "scaling.foo: unknown field",
            "timeout_s: Input should be greater than 0",
        ]


class TestScalingBounds:
    def test_min_above_max(self, tmp_path: Path) -> None:
        """min_instances above max_instances names both values."""
        folder = make_spec(tmp_path, scaling={"min_instances": 3, "max_instances": 2})
        assert spec_errors(folder) == ["scaling: scaling.min_instances (3) exceeds scaling.max_instances (2)"]

    def test_min_above_default_max(self, tmp_path: Path) -> None:
        """The default max_instances (10) bounds min_instances too."""
        folder = make_spec(tmp_path, scaling={"min_instances": 11})
        assert spec_errors(folder) == [
            "scaling: scaling.min_instances (11) exceeds scaling.max_instances (10)"
        ]

    def test_provisioned_above_max(self, tmp_path: Path) -> None:
        """More provisioned instances than max_instances is rejected."""
        folder = make_spec(tmp_path, scaling={"provisioned": 3, "max_instances": 2})
        assert spec_errors(folder) == ["scaling: scaling.provisioned (3) exceeds scaling.max_instances (2)"]

    def test_min_equal_max_accepted(self, tmp_path: Path) -> None:
        """min_instances == max_instances == provisioned is a fixed-size function."""
        folder = make_spec(tmp_path, scaling={"min_instances": 2, "max_instances": 2, "provisioned": 2})
        scaling = load(folder).scaling
        assert (scaling.min_instances, scaling.max_instances, scaling.provisioned) == (2, 2, 2)


class TestKnativeKnobs:
    def test_target_rps_needs_metric_rps(self, tmp_path: Path) -> None:
        """An RPS target on a concurrency-scaled function is a mistake named as such."""
        folder = make_spec(tmp_path, scaling={"target_rps": 50})
        assert spec_errors(folder) == ["scaling: scaling.target_rps applies only to scaling.metric: rps"]

    def test_concurrency_target_with_metric_rps(self, tmp_path: Path) -> None:
        """metric rps with a concurrency target points at target_rps."""
        folder = make_spec(tmp_path, scaling={"metric": "rps", "target_concurrency": 2})
        assert spec_errors(folder) == [
            "scaling: scaling.target_concurrency applies only to scaling.metric: concurrency "
            "(with metric rps set scaling.target_rps)"
        ]

    def test_metric_rps_accepted(self, tmp_path: Path) -> None:
        """metric rps with a target."""
        scaling = load(make_spec(tmp_path, scaling={"metric": "rps", "target_rps": 50})).scaling
        assert (scaling.metric, scaling.target_rps) == ("rps", 50)

    def test_unknown_metric(self, tmp_path: Path) -> None:
        """Only concurrency, rps and gpu_utilization exist."""
        errors = spec_errors(make_spec(tmp_path, scaling={"metric": "cpu"}))
        assert errors == ["scaling.metric: Input should be 'concurrency', 'rps' or 'gpu_utilization'"]

    @pytest.mark.parametrize("tbc", [-2, -0.5])
    def test_burst_capacity_negative(self, tmp_path: Path, tbc: float) -> None:
        """target_burst_capacity is ≥ 0 or exactly -1, as in Knative."""
        assert spec_errors(make_spec(tmp_path, scaling={"target_burst_capacity": tbc})) == [
            f"scaling.target_burst_capacity: must be at least 0, or -1 for the gateway always in "
            f"the path, got {tbc:g}"
        ]

    @pytest.mark.parametrize("tbc", [-1, 0, 10.5])
    def test_burst_capacity_accepted(self, tmp_path: Path, tbc: float) -> None:
        """-1 (always queue), 0 (never) and any positive capacity."""
        scaling = load(make_spec(tmp_path, scaling={"target_burst_capacity": tbc})).scaling
        assert scaling.target_burst_capacity == tbc

    def test_activation_scale_bounds(self, tmp_path: Path) -> None:
        """activation_scale is at least 1 and at most max_instances."""
        assert spec_errors(make_spec(tmp_path, scaling={"activation_scale": 0})) == [
            "scaling.activation_scale: Input should be greater than or equal to 1"]
        assert spec_errors(make_spec(tmp_path, scaling={"activation_scale": 4, "max_instances": 3})) == [
            "scaling: scaling.activation_scale (4) exceeds scaling.max_instances (3)"]

    def test_stable_window_minimum(self, tmp_path: Path) -> None:
        """Knative's 6 s minimum stable window."""
        assert spec_errors(make_spec(tmp_path, scaling={"stable_window_s": 5})) == [
            "scaling.stable_window_s: Input should be greater than or equal to 6"]

    def test_negative_pod_retention(self, tmp_path: Path) -> None:
        """scale_to_zero_pod_retention_s cannot be negative."""
        assert spec_errors(make_spec(tmp_path, scaling={"scale_to_zero_pod_retention_s": -1})) == [
            "scaling.scale_to_zero_pod_retention_s: Input should be greater than or equal to 0"]


class TestScalingPolicy:
    def test_default_is_auto(self, tmp_path: Path) -> None:
        """auto (keepalive while cold starts are fast, else the KPA) unless the spec asks."""
        scaling = load(make_spec(tmp_path)).scaling
        assert (scaling.policy, scaling.keep_alive_s) == ("auto", None)

    def test_unknown_policy_lists_the_valid_ones(self, tmp_path: Path) -> None:
        """An unknown policy name fails naming the field and the choices."""
        assert spec_errors(make_spec(tmp_path, scaling={"policy": "fast"})) == [
            "scaling.policy: Input should be 'auto', 'kpa' or 'keepalive'"]

    def test_keep_alive_needs_the_keepalive_policy(self, tmp_path: Path) -> None:
        """keep_alive_s means nothing to the KPA."""
        assert spec_errors(make_spec(tmp_path, scaling={"policy": "kpa", "keep_alive_s": 5})) == [
            "scaling: scaling.keep_alive_s applies only to scaling.policy: keepalive or auto"]
        scaling = load(make_spec(tmp_path, scaling={"policy": "keepalive", "keep_alive_s": 5})).scaling
        assert (scaling.policy, scaling.keep_alive_s) == ("keepalive", 5)


class TestFieldRanges:
    def test_gpu_memory_below_smallest_slice(self, tmp_path: Path) -> None:
        """gpu_memory_mb between 1 and 1023 is below the smallest GPU slice."""
        folder = make_spec(tmp_path, resources={"gpu_memory_mb": 1023})
        assert spec_errors(folder) == [
            "resources.gpu_memory_mb: must be 0 or at least 1024 (the smallest GPU slice)"
        ]

    @pytest.mark.parametrize("gpu_memory_mb", [0, 1024])
    def test_gpu_memory_zero_or_one_slice_accepted(self, tmp_path: Path, gpu_memory_mb: int) -> None:
        """0 (no GPU) and exactly 1024 are both valid."""
        folder = make_spec(tmp_path, resources={"gpu_memory_mb": gpu_memory_mb})
        assert load(folder).resources.gpu_memory_mb == gpu_memory_mb

    def test_whole_gpus_and_slice_both_set(self, tmp_path: Path) -> None:
        """Whole GPUs and a memory slice exclude each other."""
        folder = make_spec(tmp_path, resources={"gpus": 1, "gpu_memory_mb": 4096})
        assert spec_errors(folder) == [
            "resources: set resources.gpus (whole GPUs) or resources.gpu_memory_mb (a slice of one "
            "GPU), not both"
        ]

    @pytest.mark.parametrize(("field", "value", "message"), [
        ("gpu_memory_mb", -1024, "Input should be greater than or equal to 0"),
        ("gpu_memory_mb", 2048.5, "Input should be a valid integer"),
        ("gpus", -1, "Input should be greater than or equal to 0"),
        ("gpus", 1.5, "Input should be a valid integer"),
        ("memory_mb", "256", "Input should be a valid integer"),
    ])
    def test_bad_sizes(self, tmp_path: Path, field: str, value: object, message: str) -> None:
        """Negative or non-integer sizes are rejected naming the field."""
        folder = make_spec(tmp_path, resources={field: value})
        assert spec_errors(folder) == [f"resources.{field}: {message}"]

    def test_concurrency_zero(self, tmp_path: Path) -> None:
        """An instance must take at least one request at a time."""
        folder = make_spec(tmp_path, concurrency=0)
        assert spec_errors(folder) == ["concurrency: Input should be greater than or equal to 1"]

    def test_negative_timeout(self, tmp_path: Path) -> None:
        """A negative request timeout is rejected."""
        folder = make_spec(tmp_path, timeout_s=-1)
        assert spec_errors(folder) == ["timeout_s: Input should be greater than 0"]

    def test_zero_queue_timeout(self, tmp_path: Path) -> None:
        """queue.timeout_s must be positive."""
        folder = make_spec(tmp_path, queue={"timeout_s": 0})
        assert spec_errors(folder) == ["queue.timeout_s: Input should be greater than 0"]


class TestRouting:
    def test_known_policy_accepted(self, tmp_path: Path) -> None:
        """A registered routing policy name is kept as given."""
        assert load(make_spec(tmp_path, routing={"policy": "round_robin"})).routing.policy == "round_robin"

    def test_unknown_policy_rejected(self, tmp_path: Path) -> None:
        """An unknown routing policy is a spec error naming routing.policy, before anything is deployed."""
        folder = make_spec(tmp_path, routing={"policy": "fastest"})
        assert spec_errors(folder) == [
            "routing.policy: unknown routing policy 'fastest'; valid policies: "
            "first_available, least_outstanding, power_of_two, round_robin"
        ]


class TestFiles:
    def test_handler_module_missing(self, tmp_path: Path) -> None:
        """A handler whose module is neither in the folder nor installed says where it looked."""
        folder = make_spec(tmp_path, runtime={"handler": "missing_handler_mod:Echo"})
        assert spec_errors(folder) == [
            f"runtime.handler: module 'missing_handler_mod' not found in {folder} "
            "(looked for missing_handler_mod.py and missing_handler_mod/__init__.py)"
        ]

    def test_dotted_handler_module_missing_names_full_path(self, tmp_path: Path) -> None:
        """A missing dotted module names both paths relative to the folder."""
        folder = make_spec(tmp_path, runtime={"handler": "pkg.sub:Echo"})
        assert spec_errors(folder) == [
            f"runtime.handler: module 'pkg.sub' not found in {folder} "
            "(looked for pkg/sub.py and pkg/sub/__init__.py)"
        ]

    def test_handler_found_as_module_file(self, tmp_path: Path) -> None:
        """model:Echo is satisfied by model.py in the folder."""
        spec = load(make_spec(tmp_path))
        assert (spec.kind, spec.runtime.handler) == ("handler", "model:Echo")

    def test_handler_found_as_package(self, tmp_path: Path) -> None:
        """model:Echo is satisfied by model/__init__.py in the folder."""
        folder = make_spec(tmp_path, files={"model/__init__.py": MODEL_SOURCE})
        assert load(folder).runtime.handler == "model:Echo"

    def test_dotted_handler_found_as_module_file(self, tmp_path: Path) -> None:
        """pkg.sub:Echo is satisfied by pkg/sub.py in the folder."""
        folder = make_spec(tmp_path, runtime={"handler": "pkg.sub:Echo"},
                           files={"pkg/__init__.py": "", "pkg/sub.py": MODEL_SOURCE})
        assert load(folder).runtime.handler == "pkg.sub:Echo"

    def test_model_path_missing(self, tmp_path: Path) -> None:
        """A model.path that does not exist is reported resolved against the spec's folder."""
        folder = make_spec(tmp_path, model={"path": "weights/model.onnx"})
        assert spec_errors(folder) == [f"model.path: {folder / 'weights' / 'model.onnx'} does not exist"]

    def test_model_without_path(self, tmp_path: Path) -> None:
        """A model section needs its path."""
        folder = make_spec(tmp_path, model={})
        assert spec_errors(folder) == ["model.path: Field required"]

    def test_relative_model_path_resolved_against_spec_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative model.path (even with '..') is resolved against the spec's folder, not the cwd."""
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "w.bin").write_bytes(b"\0")
        folder = make_spec(tmp_path / "fn", model={"path": "../shared/w.bin"})
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        spec, _, base_dir = load_spec_file(folder)
        assert resolve_model_path(spec, base_dir) == tmp_path.resolve() / "shared" / "w.bin"

    def test_absolute_model_path_kept(self, tmp_path: Path) -> None:
        """An absolute model.path is used as given."""
        weights = tmp_path.resolve() / "w.bin"
        weights.write_bytes(b"\0")
        spec, _, base_dir = load_spec_file(make_spec(tmp_path, model={"path": str(weights)}))
        assert resolve_model_path(spec, base_dir) == weights

    def test_no_model_resolves_to_none(self, tmp_path: Path) -> None:
        """Without a model section there is no model path."""
        spec, _, base_dir = load_spec_file(make_spec(tmp_path))
        assert resolve_model_path(spec, base_dir) is None


class TestSpecFile:
    def test_yaml_syntax_error(self, tmp_path: Path) -> None:
        """Broken YAML is reported with the parser's line and column."""
        (tmp_path / "torpor.yaml").write_text("name: echo\n  bad: indent\n")
        assert spec_errors(tmp_path) == [
            "not valid YAML: mapping values are not allowed here\n"
            '  in "<unicode string>", line 2, column 6:\n'
            "      bad: indent\n"
            "         ^"
        ]

    def test_not_utf8(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 says so instead of raising UnicodeDecodeError."""
        (tmp_path / "torpor.yaml").write_bytes(b"name: \xff\xfe\n")
        assert spec_errors(tmp_path) == ["not UTF-8 text"]

    @pytest.mark.parametrize("text", ["- name: echo\n", "just a string\n", ""])
    def test_top_level_not_a_mapping(self, tmp_path: Path, text: str) -> None:
        """A list, a scalar or an empty file is not a spec."""
        (tmp_path / "torpor.yaml").write_text(text)
        assert spec_errors(tmp_path) == ["(top level): must be a mapping of fields"]

    def test_folder_without_spec(self, tmp_path: Path) -> None:
        """A folder with no torpor.yaml names the file it looked for."""
        with pytest.raises(SpecError) as excinfo:
            load_spec_file(tmp_path)
        assert (excinfo.value.source, excinfo.value.errors) == (str(tmp_path / "torpor.yaml"),
                                                                ["file not found"])

    def test_missing_file(self, tmp_path: Path) -> None:
        """A spec file path that does not exist is reported as given."""
        with pytest.raises(SpecError) as excinfo:
            load_spec_file(tmp_path / "nope.yaml")
        assert (excinfo.value.source, excinfo.value.errors) == (str(tmp_path / "nope.yaml"),
                                                                ["file not found"])

    def test_error_message_names_file(self, tmp_path: Path) -> None:
        """The exception text is the resolved file then every problem, so a CLI can print it as is."""
        folder = make_spec(tmp_path, concurrency=0)
        with pytest.raises(SpecError) as excinfo:
            load_spec_file(folder)
        assert str(excinfo.value) == (
            f"{folder / 'torpor.yaml'}: concurrency: Input should be greater than or equal to 1"
        )

    def test_load_directory(self, tmp_path: Path) -> None:
        """A folder loads its torpor.yaml; the raw mapping and the code folder come back with it."""
        folder = make_spec(tmp_path, concurrency=4)
        spec, raw, base_dir = load_spec_file(folder)
        assert (spec.name, spec.concurrency) == ("echo", 4)
        assert raw == {"name": "echo", "runtime": {"handler": "model:Echo"}, "concurrency": 4}
        assert base_dir == folder

    def test_load_named_file(self, tmp_path: Path) -> None:
        """A file path loads that file, whatever its name, with its folder as the code folder."""
        folder = make_spec(tmp_path)
        staging = folder / "staging.yaml"
        staging.write_text("name: echo-staging\nruntime:\n  handler: model:Echo\n")
        spec, raw, base_dir = load_spec_file(staging)
        assert (spec.name, raw["name"], base_dir) == ("echo-staging", "echo-staging", folder)


class TestDefaults:
    def test_function_defaults(self, tmp_path: Path) -> None:
        """A minimal spec takes one request at a time with the documented timeouts, queue and policy."""
        spec = load(make_spec(tmp_path))
        assert (spec.concurrency, spec.timeout_s, spec.initialize_timeout_s) == (1, 60.0, 60.0)
        assert (spec.queue.max_queued, spec.queue.timeout_s) == (100, 30.0)
        assert spec.routing.policy == "least_outstanding"
        assert (spec.env, spec.model) == ({}, None)
        resources = spec.resources
        assert (resources.cpus, resources.memory_mb, resources.gpus, resources.gpu_memory_mb) == (
            1.0, 1024, 0, 0)

    def test_scaling_defaults(self, tmp_path: Path) -> None:
        """Scaling defaults: 0-10 instances, 30 s grace, and Knative's KPA defaults."""
        scaling = load(make_spec(tmp_path)).scaling
        assert (scaling.min_instances, scaling.max_instances, scaling.initial_instances,
                scaling.provisioned) == (0, 10, 0, 0)
        assert scaling.scale_to_zero_grace_s == 30.0
        assert scaling.target_concurrency is None
        assert scaling.target_utilization == 0.7
        assert scaling.stable_window_s == 60.0
        assert scaling.panic_window_pct == 10.0
        assert scaling.panic_threshold_pct == 200.0
        assert scaling.max_scale_up_rate == 1000.0
        assert scaling.max_scale_down_rate == 2.0
        assert scaling.scale_down_delay_s == 0.0
        assert scaling.tick_s == 2.0
        assert (scaling.metric, scaling.target_rps, scaling.activation_scale) == ("concurrency", None, 1)
        assert (scaling.target_burst_capacity, scaling.scale_to_zero_pod_retention_s) == (211.0, 0.0)


class TestGpuScaling:
    def test_gpu_utilization_defaults_to_50(self, tmp_path: Path) -> None:
        """scaling.metric gpu_utilization without a target holds 50 % (seed 004)."""
        folder = make_spec(tmp_path, resources={"gpu_memory_mb": 4096},
                           scaling={"metric": "gpu_utilization"})
        assert load(folder).scaling.gpu_target_pct == 50.0

    def test_gpu_utilization_needs_a_gpu(self, tmp_path: Path) -> None:
        """Scaling on GPU utilisation without a GPU is refused."""
        folder = make_spec(tmp_path, scaling={"metric": "gpu_utilization", "target": 50})
        assert spec_errors(folder) == [
            "(top level): scaling.metric gpu_utilization needs a GPU: set resources.gpus or "
            "resources.gpu_memory_mb"]

    def test_target_without_gpu_metric(self, tmp_path: Path) -> None:
        """scaling.target belongs to gpu_utilization; requests use target_concurrency."""
        folder = make_spec(tmp_path, scaling={"target": 50})
        assert spec_errors(folder) == [
            "scaling: scaling.target is the gpu_utilization target in percent; set scaling.metric: "
            "gpu_utilization (for requests use scaling.target_concurrency)"]

    def test_target_over_100(self, tmp_path: Path) -> None:
        """A utilisation target is a percentage."""
        folder = make_spec(tmp_path, resources={"gpus": 1},
                           scaling={"metric": "gpu_utilization", "target": 150})
        assert spec_errors(folder) == ["scaling.target: Input should be less than or equal to 100"]

    def test_rps_target_with_gpu_metric(self, tmp_path: Path) -> None:
        """gpu_utilization averages requests in the system, so an RPS target is refused with it."""
        folder = make_spec(tmp_path, resources={"gpus": 1},
                           scaling={"metric": "gpu_utilization", "target_rps": 50})
        assert spec_errors(folder) == ["scaling: scaling.target_rps applies only to scaling.metric: rps"]

    def test_gpu_metric_keeps_the_kpa_on_concurrency(self, tmp_path: Path) -> None:
        """The KPA beside the GPU rule averages requests in the system, at the concurrency target."""
        from torpor.autoscaling.kpa import KpaConfig

        spec = load(make_spec(tmp_path, resources={"gpus": 1}, scaling={
            "metric": "gpu_utilization", "target": 60, "target_concurrency": 0.5}))
        config = KpaConfig.from_spec(spec.scaling, spec.concurrency)
        assert (config.metric, config.target_total, spec.scaling.gpu_target_pct) == (
            "concurrency", 0.5, 60)
