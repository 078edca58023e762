"""Request traces: arrival times and service times per function, read from the public formats.

A :class:`Trace` maps each function to two parallel arrays, arrival seconds (sorted, from the trace's
first request) and service seconds. Formats are chosen by name from :data:`FORMATS` or detected from
the file's first line:

==================  ===============================================================================
format              columns read
==================  ===============================================================================
``torpor``          CSV ``timestamp_s,function,duration_ms`` (torpor's own)
``azure_llm``       Azure LLM inference 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens``; one function
``mooncake``        Mooncake FAST'25 JSON lines: ``timestamp`` (ms), ``input_length``, ``output_length``
``alibaba_genai``   Alibaba GenTD26 ``lora_request_trace.csv``: ``gmt_create``, ``exec_time_seconds``;
                    one function per ``checkpoint_model_version_id``; failed requests kept (they ran)
``azure_functions`` Azure Functions 2021: ``app,func,end_timestamp,duration`` (seconds); arrival is
                    end - duration; one function per app/func pair
==================  ===============================================================================

The two LLM traces carry token counts, not times: :class:`TokenModel` turns them into seconds
(``base_s + context / prefill_tokens_per_s + generated / decode_tokens_per_s``) and its parameters are
printed with every result.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from torpor.errors import TorporError


class TraceError(TorporError):
    """A trace file that cannot be read as the format asked for."""


@dataclass(frozen=True)
class TokenModel:
    """Seconds for an LLM request from its token counts: e.g. 1,020 context and 129 generated tokens
    at the defaults are 0.05 + 1020 / 5000 + 129 / 50 = 2.834 s."""

    base_s: float = 0.05
    prefill_tokens_per_s: float = 5000.0
    decode_tokens_per_s: float = 50.0

    def seconds(self, context: float, generated: float) -> float:
        return self.base_s + context / self.prefill_tokens_per_s + generated / self.decode_tokens_per_s

    def describe(self) -> str:
        return (f"service_s = {self.base_s:g} + context / {self.prefill_tokens_per_s:g} "
                f"+ generated / {self.decode_tokens_per_s:g}")

    @classmethod
    def parse(cls, text: str) -> TokenModel:
        """``base_s=0.05,prefill_tokens_per_s=5000,decode_tokens_per_s=50`` (any subset)."""
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in cls.__dataclass_fields__:
                valid = ", ".join(cls.__dataclass_fields__)
                raise TraceError(f"--token-model: unknown parameter {key!r}; valid: {valid}")
            try:
                values[key] = float(value)
            except ValueError:
                raise TraceError(f"--token-model: {key} must be a number, got {value!r}") from None
        model = cls(**values)
        if min(model.prefill_tokens_per_s, model.decode_tokens_per_s) <= 0 or model.base_s < 0:
            raise TraceError("--token-model: token rates must be positive and base_s at least 0")
        return model


@dataclass
class FunctionTrace:
    """One function's requests: ``arrivals_s`` sorted ascending, ``services_s`` beside them."""

    arrivals_s: array[float] = field(default_factory=lambda: array("d"))
    services_s: array[float] = field(default_factory=lambda: array("d"))

    def __len__(self) -> int:
        return len(self.arrivals_s)


@dataclass
class Trace:
    """Requests per function, times in seconds from the first request of the whole trace."""

    functions: dict[str, FunctionTrace]
    source: str
    format: str
    service_model: str  # how service times were obtained, printed with results

    @property
    def requests(self) -> int:
        return sum(len(f) for f in self.functions.values())

    @property
    def span_s(self) -> float:
        return max((f.arrivals_s[-1] for f in self.functions.values() if len(f)), default=0.0)

    def window(self, start_s: float, end_s: float, time_scale: float = 1.0) -> Trace:
        """Requests arriving in ``[start_s, end_s)``, shifted to start at 0; arrival gaps and service
        times divided by ``time_scale`` (2 replays the window twice as fast)."""
        out: dict[str, FunctionTrace] = {}
        for name, fn in self.functions.items():
            part = FunctionTrace()
            for t, s in zip(fn.arrivals_s, fn.services_s, strict=True):
                if start_s <= t < end_s:
                    part.arrivals_s.append((t - start_s) / time_scale)
                    part.services_s.append(s / time_scale)
            if len(part):
                out[name] = part
        model = self.service_model + (f", time compressed ×{time_scale:g}" if time_scale != 1 else "")
        return Trace(out, self.source, self.format, model)


def _build(rows: Iterable[tuple[float, str, float]], source: str, fmt: str, model: str) -> Trace:
    """Sort ``(arrival, function, service)`` rows and shift times so the first request is at 0."""
    ordered = sorted(rows, key=lambda row: row[0])
    if not ordered:
        raise TraceError(f"{source}: no requests in the trace")
    first = ordered[0][0]
    functions: dict[str, FunctionTrace] = {}
    for t, name, service in ordered:
        fn = functions.get(name)
        if fn is None:
            fn = functions[name] = FunctionTrace()
        fn.arrivals_s.append(t - first)
        fn.services_s.append(max(0.0, service))
    return Trace(functions, source, fmt, model)


def _timestamp(text: str) -> float:
    """Azure's ``2023-11-16 18:17:03.9799600`` has 7 fractional digits: cut to 26 characters."""
    return datetime.fromisoformat(text.strip()[:26]).timestamp()


def _rows(lines: Iterable[str], source: str, needed: tuple[str, ...]) -> Iterator[dict[str, str]]:
    reader = csv.DictReader(lines)
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise TraceError(f"{source}: missing column(s) {', '.join(missing)} "
                         f"(header: {','.join(reader.fieldnames or [])})")
    yield from reader


def _number(row: dict[str, str], column: str, source: str, line: int) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise TraceError(f"{source}, row {line}: {column} is not a number ({row[column]!r})") from None


def read_torpor(lines: Iterable[str], source: str, tokens: TokenModel) -> Trace:
    rows = []
    for n, row in enumerate(_rows(lines, source, ("timestamp_s", "function", "duration_ms")), 2):
        rows.append((_number(row, "timestamp_s", source, n), row["function"],
                     _number(row, "duration_ms", source, n) / 1000))
    return _build(rows, source, "torpor", "duration_ms from the trace")


def read_azure_llm(lines: Iterable[str], source: str, tokens: TokenModel) -> Trace:
    rows = []
    for n, row in enumerate(_rows(lines, source, ("TIMESTAMP", "ContextTokens", "GeneratedTokens")), 2):
        try:
            t = _timestamp(row["TIMESTAMP"])
        except ValueError:
            raise TraceError(f"{source}, row {n}: TIMESTAMP {row['TIMESTAMP']!r} is not a time") from None
        service = tokens.seconds(_number(row, "ContextTokens", source, n),
                                 _number(row, "GeneratedTokens", source, n))
        rows.append((t, "llm", service))
    return _build(rows, source, "azure_llm", tokens.describe())


def read_mooncake(lines: Iterable[str], source: str, tokens: TokenModel) -> Trace:
    rows = []
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            t = float(record["timestamp"]) / 1000
            service = tokens.seconds(float(record["input_length"]), float(record["output_length"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"{source}, line {n}: not a Mooncake record ({exc})") from None
        rows.append((t, "llm", service))
    return _build(rows, source, "mooncake", tokens.describe())


def read_alibaba_genai(lines: Iterable[str], source: str, tokens: TokenModel) -> Trace:
    rows = []
    needed = ("gmt_create", "exec_time_seconds", "checkpoint_model_version_id")
    for n, row in enumerate(_rows(lines, source, needed), 2):
        if not row["exec_time_seconds"]:
            continue
        try:
            t = datetime.fromisoformat(row["gmt_create"]).timestamp()
        except ValueError:
            raise TraceError(f"{source}, row {n}: gmt_create {row['gmt_create']!r} is not a time") from None
        rows.append((t, row["checkpoint_model_version_id"] or "default",
                     _number(row, "exec_time_seconds", source, n)))
    return _build(rows, source, "alibaba_genai", "exec_time_seconds from the trace")


def read_azure_functions(lines: Iterable[str], source: str, tokens: TokenModel) -> Trace:
    rows = []
    for n, row in enumerate(_rows(lines, source, ("app", "func", "end_timestamp", "duration")), 2):
        duration = _number(row, "duration", source, n)
        end = _number(row, "end_timestamp", source, n)
        rows.append((end - duration, f"{row['app'][:8]}-{row['func'][:8]}", duration))
    return _build(rows, source, "azure_functions", "duration from the trace")


Reader = Callable[[Iterable[str], str, TokenModel], Trace]
FORMATS: dict[str, Reader] = {
    "torpor": read_torpor,
    "azure_llm": read_azure_llm,
    "mooncake": read_mooncake,
    "alibaba_genai": read_alibaba_genai,
    "azure_functions": read_azure_functions,
}
_HEADERS = {
    "timestamp_s,function,duration_ms": "torpor",
    "TIMESTAMP,ContextTokens,GeneratedTokens": "azure_llm",
    "app,func,end_timestamp,duration": "azure_functions",
}


def detect_format(first_line: str, source: str) -> str:
    line = first_line.strip().lstrip("\ufeff")
    if line.startswith("{"):
        return "mooncake"
    if line in _HEADERS:
        return _HEADERS[line]
    if line.startswith("gmt_create,"):
        return "alibaba_genai"
    raise TraceError(f"{source}: cannot tell the trace format from its first line {line[:80]!r}; "
                     f"pass --format ({', '.join(FORMATS)})")


def parse_trace(text: str, source: str, fmt: str | None = None, tokens: TokenModel | None = None) -> Trace:
    """A trace from its text; ``fmt`` None detects the format from the first line."""
    if fmt is None:
        fmt = detect_format(text.split("\n", 1)[0], source)
    if fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return FORMATS[fmt](io.StringIO(text), source, tokens or TokenModel())


def load_trace(path: Path, fmt: str | None = None, tokens: TokenModel | None = None) -> Trace:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TraceError(f"{path}: trace file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: cannot read the trace ({exc})") from None
    return parse_trace(text, str(path), fmt, tokens)


def resample(trace: Trace, *, functions: int, rate_per_s: float, duration_s: float, seed: int) -> Trace:
    """``functions`` synthetic functions at ``rate_per_s`` each over ``duration_s``: inter-arrival gaps
    drawn from the trace's own gaps (scaled to the rate, so its burstiness is kept) and service times
    drawn from its service times, with a seeded generator (same seed, same trace)."""
    source_arrivals = sorted(t for fn in trace.functions.values() for t in fn.arrivals_s)
    gaps = [b - a for a, b in itertools.pairwise(source_arrivals) if b > a]
    services = [s for fn in trace.functions.values() for s in fn.services_s]
    if not gaps or not services:
        raise TraceError(f"{trace.source}: too few requests to resample")
    scale = (1 / rate_per_s) / (sum(gaps) / len(gaps))  # mean gap → 1 / rate
    rng = random.Random(seed)
    out: dict[str, FunctionTrace] = {}
    for n in range(functions):
        fn = FunctionTrace()
        t = rng.random() * scale * rng.choice(gaps)  # functions do not all start at 0
        while t < duration_s:
            fn.arrivals_s.append(t)
            fn.services_s.append(rng.choice(services))
            t += rng.choice(gaps) * scale
        out[f"fn-{n:03d}"] = fn
    model = (f"resampled from {trace.source}: {functions} functions × {rate_per_s:g} req/s × "
             f"{duration_s:g} s; {trace.service_model}")
    return Trace(out, trace.source, trace.format, model)
