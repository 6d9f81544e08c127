"""What the controller accepts from an agent's stream, and why it refuses the rest (#18).

An agent is a separate program on another host: its numbers drive policies that change a
live server's configuration, so a NaN latency, a negative count, a limit of four billion
instances or a generation past what SQLite can store must never reach a policy. These pure
functions sort each value into accepted, clamped (made safe and used, e.g. quantiles put
back in order) or rejected (that model's window is not used: no decision, its knobs stay).
Every clamp and rejection comes back as a ``Problem`` naming the field, so the stream
handler can log the reason and count it in a metric whose label set is fixed (the field
names below, never agent input).

The bounds are generous: far above anything a real server reports, small enough that
nothing downstream (the policy's arithmetic, SQLite, protobuf's uint64) can overflow.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from dnnscaler.controller.admin_checks import check_name
from dnnscaler.core.convert import WINDOW_LATENCIES, window_from_pb
from dnnscaler.core.types import GpuTelemetry, InvalidValue, WindowStats, shown
from dnnscaler.v1 import agent_pb2, common_pb2

MAX_BATCH_SIZE = 1 << 16  # Triton's own limit is an int32; no GPU batches 65,536 requests
MAX_INSTANCES = 1024
MAX_QUEUE_DELAY_US = 60_000_000  # one minute
# JSON (the stored policy state) keeps integers exactly up to 2**53; SQLite up to 2**63 - 1.
MAX_GENERATION = 2**53
MAX_LATENCY_MS = 3_600_000.0  # one hour: the SLO's own upper bound
MAX_WINDOW_S = 3600.0
MAX_RPS = 10_000_000.0  # requests per second, per model on one GPU
MAX_PENDING = 1_000_000_000
MAX_MEMORY_MB = 1e9  # a petabyte
MAX_MODELS = 256  # per agent: more is a runaway (each model is a loop, a row, metric labels)
MAX_TEXT_CHARS = 1000  # free-text messages shown in status and events

_M = TypeVar("_M")

_TELEMETRY = ("utilization_pct", "memory_used_mb", "memory_total_mb", "power_w")


@dataclass(frozen=True)
class Problem:
    """One refused or clamped value: ``field`` is a fixed name (a metric label), ``message``
    says what was wrong, quoting agent input only through ``shown``."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class ModelCheck:
    """One model of a report. ``window`` is None when the model's entry is rejected."""

    name: str
    state: agent_pb2.ModelState
    window: WindowStats | None
    rejected: tuple[Problem, ...] = ()
    clamped: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class ReportCheck:
    """A whole report: ``rejected`` non-empty means none of it is used."""

    rejected: tuple[Problem, ...]
    clamped: tuple[Problem, ...]
    telemetry: GpuTelemetry
    backend_message: str
    models: tuple[ModelCheck, ...]


def _number(field: str, v: float, hi: float, problems: list[Problem]) -> None:
    if not (math.isfinite(v) and 0 <= v <= hi):
        problems.append(Problem(field, f"must be a finite number in 0..{hi:g}, got {v!r}"))


def _count(field: str, v: int, hi: int | float, problems: list[Problem]) -> None:
    if v > hi:
        problems.append(Problem(field, f"at most {hi:g}, got {v}"))


def text(field: str, value: str, clamped: list[Problem]) -> str:
    """A free-text message cut to ``MAX_TEXT_CHARS`` (a clamp, recorded in ``clamped``)."""
    if len(value) <= MAX_TEXT_CHARS:
        return value
    clamped.append(Problem(field, f"cut from {len(value)} to {MAX_TEXT_CHARS} characters"))
    return value[:MAX_TEXT_CHARS]


@dataclass(frozen=True)
class HelloFields:
    """A hello's descriptive fields, made safe to keep and show (``check_hello``)."""

    node: str
    gpu_uuid: str
    gpu_name: str
    gpu_memory_total_mb: float | None
    backend_kind: str
    backend_message: str


def check_hello(hello: agent_pb2.Hello) -> tuple[HelloFields, list[Problem]]:
    """A hello's free text cut to ``MAX_TEXT_CHARS`` and an impossible GPU memory made
    unknown, with the clamps: a 3 MB node name kept per agent would make every status
    answer larger than a client takes (4 MiB), so one agent could break ``status``."""
    clamped: list[Problem] = []
    mem: float | None = None
    if hello.gpu.HasField("memory_total_mb"):
        v = hello.gpu.memory_total_mb
        if math.isfinite(v) and 0 <= v <= MAX_MEMORY_MB:
            mem = v
        else:
            clamped.append(Problem("gpu.memory_total_mb", f"{v!r} is not a reading: unknown"))
    fields = HelloFields(
        node=text("node", hello.node, clamped),
        gpu_uuid=text("gpu.uuid", hello.gpu.uuid, clamped),
        gpu_name=text("gpu.name", hello.gpu.name, clamped),
        gpu_memory_total_mb=mem,
        backend_kind=text("backend_kind", hello.backend_kind, clamped),
        backend_message=text("backend_message", hello.backend_message, clamped),
    )
    return fields, clamped


def clamp_state(ms: agent_pb2.ModelState, clamped: list[Problem]) -> agent_pb2.ModelState:
    """``ms`` with its message cut to ``MAX_TEXT_CHARS`` (a copy, only when it is longer)."""
    if len(ms.message) <= MAX_TEXT_CHARS:
        return ms
    state = agent_pb2.ModelState()
    state.CopyFrom(ms)
    state.message = text("message", ms.message, clamped)
    return state


def state_problems(ms: agent_pb2.ModelState) -> list[Problem]:
    """Why a model's reported state (name, knobs, limits, generation, memory) cannot be
    taken; empty when it can. Used for hellos and reports alike."""
    problems: list[Problem] = []
    try:
        check_name("model", ms.name)
    except InvalidValue as e:
        problems.append(Problem("model", e.message))
    lim = ms.limits
    _knob_problems("knobs", ms.knobs, problems)
    _count("limits", lim.max_batch_size, MAX_BATCH_SIZE, problems)
    _count("limits", lim.max_instances, MAX_INSTANCES, problems)
    _count("limits", lim.max_queue_delay_us, MAX_QUEUE_DELAY_US, problems)
    _count("generation", ms.generation, MAX_GENERATION, problems)
    if ms.HasField("instance_memory_mb"):
        _number("instance_memory_mb", ms.instance_memory_mb, MAX_MEMORY_MB, problems)
    return problems


def _knob_problems(field: str, k: common_pb2.Knobs, problems: list[Problem]) -> None:
    if not 1 <= k.max_batch_size <= MAX_BATCH_SIZE:
        problems.append(
            Problem(field, f"max_batch_size must be in 1..{MAX_BATCH_SIZE}, got {k.max_batch_size}")
        )
    if not 1 <= k.instances <= MAX_INSTANCES:
        problems.append(
            Problem(field, f"instances must be in 1..{MAX_INSTANCES}, got {k.instances}")
        )
    _count(field, k.queue_delay_us, MAX_QUEUE_DELAY_US, problems)


def check_apply_result(res: agent_pb2.ApplyResult) -> tuple[str, list[Problem], list[Problem]]:
    """An apply result's error text (cut to ``MAX_TEXT_CHARS``), why it cannot be taken
    (a bad model name, knobs in force past the bounds, a generation past ``MAX_GENERATION``:
    the loop would take them as its knobs), and what was clamped."""
    rejected: list[Problem] = []
    clamped: list[Problem] = []
    try:
        check_name("model", res.model)
    except InvalidValue as e:
        rejected.append(Problem("model", e.message))
    _knob_problems("apply.knobs_in_force", res.knobs_in_force, rejected)
    _count("generation", res.generation, MAX_GENERATION, rejected)
    return text("apply.error", res.error, clamped), rejected, clamped


def window_problems(w: common_pb2.WindowStats) -> list[Problem]:
    """Why a window's measurements cannot be given to a policy; empty when they can."""
    problems: list[Problem] = []
    if not (math.isfinite(w.window_s) and 0 < w.window_s <= MAX_WINDOW_S):
        problems.append(
            Problem("window.window_s", f"must be in (0, {MAX_WINDOW_S:g}], got {w.window_s!r}")
        )
    most = MAX_RPS * min(max(w.window_s, 1.0), MAX_WINDOW_S) if math.isfinite(w.window_s) else 0
    _count("window.counts", w.completed + w.failed, most, problems)
    _number("window.throughput_rps", w.throughput_rps, MAX_RPS, problems)
    for name in WINDOW_LATENCIES:
        if w.HasField(name):
            _number(f"window.{name}", getattr(w, name), MAX_LATENCY_MS, problems)
    if w.HasField("pending_requests"):
        _count("window.pending_requests", w.pending_requests, MAX_PENDING, problems)
    if w.HasField("device_busy_share"):
        _number("window.device_busy_share", w.device_busy_share, 1.0, problems)
    sizes: set[int] = set()
    for s in w.batch_stats:
        if not 1 <= s.batch_size <= MAX_BATCH_SIZE or s.batch_size in sizes:
            problems.append(
                Problem("window.batch_stats", f"batch size {s.batch_size} out of range or repeated")
            )
        sizes.add(s.batch_size)
        _count("window.batch_stats", s.count, most, problems)
        _number("window.batch_stats", s.compute_ms_mean, MAX_LATENCY_MS, problems)
    return problems


def clamp_window(w: WindowStats) -> tuple[WindowStats, list[Problem]]:
    """Quantiles out of order (p50 > p95 or p95 > p99) raised to the lower one's value: a
    tail estimate is never smaller than the median it sits above."""
    clamped: list[Problem] = []
    p50, p95, p99 = w.latency_p50_ms, w.latency_p95_ms, w.latency_p99_ms
    if p50 is not None and p95 is not None and p95 < p50:
        clamped.append(Problem("window.quantiles", f"p95 {p95:g} < p50 {p50:g}: raised to p50"))
        p95 = p50
    low = p95 if p95 is not None else p50
    if low is not None and p99 is not None and p99 < low:
        clamped.append(Problem("window.quantiles", f"p99 {p99:g} < {low:g}: raised to it"))
        p99 = low
    if not clamped:
        return w, clamped
    return replace(w, latency_p95_ms=p95, latency_p99_ms=p99), clamped


def check_telemetry(m: common_pb2.GpuTelemetry) -> tuple[GpuTelemetry, list[Problem]]:
    """GPU readings; an impossible one (NaN, negative, over 100 %) becomes unknown, which
    every policy already handles, and is reported as a clamp."""
    clamped: list[Problem] = []
    values: dict[str, float | None] = {}
    for name in _TELEMETRY:
        values[name] = None
        if m.HasField(name):
            v = float(getattr(m, name))
            hi = 100.0 if name == "utilization_pct" else MAX_MEMORY_MB
            if math.isfinite(v) and 0 <= v <= hi:
                values[name] = v
            else:
                clamped.append(Problem(f"gpu.{name}", f"{v!r} is not a reading: unknown"))
    return GpuTelemetry(**values), clamped


def first_models(
    entries: Sequence[_M], clamped: list[Problem], most: int = MAX_MODELS
) -> Sequence[_M]:
    """The first ``most`` model entries of a message; more is one clamp, not one refusal
    (and one log line) per entry: a 4 MiB message holds about 100,000 of them."""
    if len(entries) <= most:
        return entries
    clamped.append(Problem("models", f"{len(entries)} entries: only the first {most} are read"))
    return entries[:most]


def check_report(
    report: agent_pb2.Report, known: Collection[str], last_seq: int = 0
) -> ReportCheck:
    """Sort a report into what may be used and what may not, with the reasons.

    ``known``: the agent's models so far (a new name beyond ``MAX_MODELS`` is refused);
    ``last_seq``: the highest sequence number taken on this stream (a report numbered at
    or below it is a duplicate or out of order, and is refused whole; 0 means unnumbered).
    """
    clamped: list[Problem] = []
    if report.seq and report.seq <= last_seq:
        dup = Problem("seq", f"{report.seq} is not after {last_seq}: duplicate or out of order")
        return ReportCheck((dup,), (), GpuTelemetry(), "", ())
    telemetry, tel_clamps = check_telemetry(report.gpu)
    clamped.extend(tel_clamps)
    message = text("backend_message", report.backend_message, clamped)
    models: list[ModelCheck] = []
    seen: set[str] = set()
    new = 0
    for mr in first_models(report.models, clamped):
        name = mr.state.name
        rejected = state_problems(mr.state)
        if name in seen:
            rejected.append(Problem("model", f"{shown(name)} reported twice in one report"))
        elif name not in known:
            new += 1
            if len(known) + new > MAX_MODELS:
                rejected.append(Problem("model", f"more than {MAX_MODELS} models on one agent"))
        seen.add(name)
        rejected.extend(window_problems(mr.window))
        if rejected:
            models.append(ModelCheck(name, mr.state, None, tuple(rejected)))
            continue
        mclamped: list[Problem] = []
        state = clamp_state(mr.state, mclamped)
        window, wclamped = clamp_window(window_from_pb(mr.window))
        mclamped.extend(wclamped)
        models.append(ModelCheck(name, state, window, (), tuple(mclamped)))
    return ReportCheck((), tuple(clamped), telemetry, message, tuple(models))
