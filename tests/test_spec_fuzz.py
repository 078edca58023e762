"""Hypothesis on spec parsing: any YAML-ish mapping, and any text as a torpor.yaml, either becomes a
FunctionSpec or is refused with a SpecError naming what is wrong; no other exception escapes."""

from __future__ import annotations

import datetime
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from torpor.errors import SpecError
from torpor.spec import FunctionSpec, load_spec_file, parse_spec


def field_names(model: type[BaseModel], seen: set[str] | None = None) -> set[str]:
    """Every field name of the spec's models, nested ones included."""
    names = seen if seen is not None else set()
    for name, info in model.model_fields.items():
        names.add(name)
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in names:
                names.add(arg.__name__)
                field_names(arg, names)
    return names


FIELDS = sorted(n for n in field_names(FunctionSpec) if n[0].islower())
BASE: dict[str, Any] = {"name": "echo", "runtime": {"handler": "model:Echo"}}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["model:Echo", "x:Y", "a.b:C", "\x00:A", "../x:Y", "package:nope/w.bin",
                     "gpu_utilization", "rps", "kpa", "keepalive", "-1", "1e400", ""]),
    st.dates(), st.datetimes(), st.binary(max_size=8),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=8), st.integers(), st.none(), st.booleans())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=20)
mappings = st.one_of(
    st.dictionaries(keys, values, max_size=8),
    # a valid spec with fields replaced: reaches the nested models and their validators
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=6).map(lambda extra: {**BASE, **extra}),
    st.fixed_dictionaries({}, optional={
        "name": st.one_of(st.just("echo"), st.text(max_size=70)),
        "runtime": st.dictionaries(st.sampled_from(["handler", "command", "port"]), values, max_size=3),
        "resources": st.dictionaries(st.sampled_from(["gpus", "gpu_memory_mb", "cpus", "memory_mb"]),
                                     values, max_size=3),
        "scaling": st.dictionaries(st.sampled_from(FIELDS), values, max_size=5),
        "model": st.dictionaries(st.sampled_from(["path", "sha256"]), values, max_size=2),
    }).map(lambda spec: {**BASE, **spec}),
)

CODE = Path(tempfile.mkdtemp(prefix="torpor-spec-fuzz-"))
(CODE / "model.py").write_text("class Echo: ...\n")


def outcome(data: Any) -> str:
    try:
        spec = parse_spec(data, source="torpor.yaml", base_dir=CODE)
    except SpecError as exc:
        assert exc.errors and all(isinstance(line, str) and line for line in exc.errors)
        return "refused"
    assert isinstance(spec, FunctionSpec)
    return "accepted"


class TestSpecFuzz:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=mappings)
    def test_any_mapping_is_a_spec_or_a_spec_error(self, data: Any) -> None:
        outcome(data)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.one_of(values, st.lists(values)))
    def test_any_value_at_the_top_is_a_spec_or_a_spec_error(self, data: Any) -> None:
        outcome(data)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(text=st.one_of(st.text(max_size=200), st.sampled_from([
        "name: echo\nruntime: {handler: model:Echo}\nscaling: {max_instances: .inf}\n",
        "name: echo\nruntime: {handler: model:Echo}\ntimeout_s: .nan\n",
        "name: echo\nruntime: {handler: model:Echo}\nenv: {A: 2020-01-01}\n",
        "name: echo\nruntime: {handler: model:Echo}\nconcurrency: 0x10\n",
        "&a [*a]", "!!python/object:os.system {}", "name: [unclosed", "\t\x00", "? [a]\n: b\n",
    ])))
    def test_any_text_as_a_spec_file_is_a_spec_or_a_spec_error(self, text: str) -> None:
        path = CODE / "torpor.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            spec, _, base_dir = load_spec_file(path)
        except SpecError as exc:
            assert exc.errors
            return
        assert (isinstance(spec, FunctionSpec), base_dir) == (True, CODE.resolve())

    def test_known_cases(self) -> None:
        """Values seen to matter: the valid base is accepted; dates, NaN, huge ints, non-string
        keys and names or handlers with a trailing newline are refused as spec errors."""
        assert outcome(BASE) == "accepted"
        for bad in ({**BASE, "env": {"A": datetime.date(2020, 1, 1)}}, {**BASE, "timeout_s": float("nan")},
                    {**BASE, "concurrency": 2**70}, {**BASE, 1: 2}, {**BASE, None: "x"},
                    {**BASE, "runtime": {"handler": "\x00:A"}},
                    # found by thinking about what the fuzz accepted: ``$`` let a trailing newline in
                    {**BASE, "name": "echo\n"}, {**BASE, "runtime": {"handler": "model:Echo\n"}}):
            assert outcome(bad) == "refused", bad
