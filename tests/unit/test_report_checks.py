"""``controller.report_checks``: which agent values are taken, clamped or refused, and that
the checks themselves never raise on anything the wire can carry (#18, protocol fuzzing)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnnscaler.controller.report_checks import (
    MAX_GENERATION,
    MAX_MODELS,
    MAX_TEXT_CHARS,
    check_apply_result,
    check_hello,
    check_report,
    state_problems,
)
from dnnscaler.v1 import agent_pb2, common_pb2


def _state(name: str = "m") -> agent_pb2.ModelState:
    return agent_pb2.ModelState(
        name=name,
        knobs=common_pb2.Knobs(max_batch_size=4, instances=2, queue_delay_us=100),
        limits=common_pb2.KnobLimits(max_batch_size=64, max_instances=4, max_queue_delay_us=1000),
        generation=3,
        available=True,
    )


def _window() -> common_pb2.WindowStats:
    w = common_pb2.WindowStats(
        window_s=1.0,
        completed=100,
        throughput_rps=100.0,
        latency_p50_ms=5.0,
        latency_p95_ms=8.0,
        latency_p99_ms=9.0,
    )
    w.batch_stats.add(batch_size=4, count=25, compute_ms_mean=3.0)
    return w


def _report(*models: agent_pb2.ModelReport, seq: int = 1) -> agent_pb2.Report:
    return agent_pb2.Report(seq=seq, models=list(models), backend_available=True)


def _one(state: agent_pb2.ModelState | None = None, window: common_pb2.WindowStats | None = None):
    mr = agent_pb2.ModelReport(state=state or _state(), window=window or _window())
    return check_report(_report(mr), known={"m"}).models[0]


def test_a_sound_report_is_taken_whole() -> None:
    mc = _one()
    assert mc.rejected == () and mc.clamped == () and mc.window is not None
    assert mc.window.latency_p99_ms == 9.0 and mc.window.batch_stats[4].count == 25


def _set(w: common_pb2.WindowStats, name: str, v: float) -> common_pb2.WindowStats:
    setattr(w, name, v)
    return w


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("latency_p99_ms", math.nan, "window.latency_p99_ms"),
        ("latency_p95_ms", -4.0, "window.latency_p95_ms"),
        ("latency_mean_ms", math.inf, "window.latency_mean_ms"),
        ("queue_mean_ms", 1e12, "window.queue_mean_ms"),
        ("throughput_rps", math.nan, "window.throughput_rps"),
        ("throughput_rps", -1.0, "window.throughput_rps"),
        ("window_s", 0.0, "window.window_s"),
        ("window_s", -1.0, "window.window_s"),
        ("window_s", math.nan, "window.window_s"),
        ("completed", 2**64 - 1, "window.counts"),
        ("pending_requests", 2**63, "window.pending_requests"),
        ("device_busy_share", 1.5, "window.device_busy_share"),
    ],
)
def test_an_impossible_measurement_rejects_the_models_window(
    field: str, value: float, where: str
) -> None:
    mc = _one(window=_set(_window(), field, value))
    assert mc.window is None
    assert where in {p.field for p in mc.rejected}, mc.rejected


@pytest.mark.parametrize(
    ("batch_size", "count", "compute_ms"),
    [(0, 1, 1.0), (4, 1, 1.0), (2, 2**64 - 1, 1.0), (2, 1, math.nan), (2, 1, -1.0)],
)
def test_bad_batch_stats_reject(batch_size: int, count: int, compute_ms: float) -> None:
    w = _window()  # already holds batch size 4: a second one is a repeat
    w.batch_stats.add(batch_size=batch_size, count=count, compute_ms_mean=compute_ms)
    mc = _one(window=w)
    assert mc.window is None and {p.field for p in mc.rejected} == {"window.batch_stats"}


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda s: setattr(s, "name", ""), "model"),
        (lambda s: setattr(s, "name", "x\x00y"), "model"),
        (lambda s: setattr(s, "name", "m" * 100_000), "model"),
        (lambda s: setattr(s.knobs, "max_batch_size", 0), "knobs"),
        (lambda s: setattr(s.knobs, "instances", 2**32 - 1), "knobs"),
        (lambda s: setattr(s.knobs, "queue_delay_us", 2**32 - 1), "knobs"),
        (lambda s: setattr(s.limits, "max_instances", 2**32 - 1), "limits"),
        (lambda s: setattr(s.limits, "max_batch_size", 2**32 - 1), "limits"),
        (lambda s: setattr(s, "generation", 2**64 - 1), "generation"),
        (lambda s: setattr(s, "instance_memory_mb", math.nan), "instance_memory_mb"),
        (lambda s: setattr(s, "instance_memory_mb", -5.0), "instance_memory_mb"),
    ],
)
def test_an_impossible_state_rejects(edit, where: str) -> None:
    s = _state()
    edit(s)
    assert where in {p.field for p in state_problems(s)}
    mc = _one(state=s)
    assert mc.window is None and where in {p.field for p in mc.rejected}


def test_the_largest_sane_generation_is_taken() -> None:
    s = _state()
    s.generation = MAX_GENERATION
    assert state_problems(s) == []


def test_quantiles_out_of_order_are_raised_never_lowered() -> None:
    w = _window()
    w.latency_p50_ms, w.latency_p95_ms, w.latency_p99_ms = 10.0, 4.0, 2.0
    mc = _one(window=w)
    assert mc.window is not None and mc.rejected == ()
    assert (mc.window.latency_p50_ms, mc.window.latency_p95_ms, mc.window.latency_p99_ms) == (
        10.0,
        10.0,
        10.0,
    )
    assert {p.field for p in mc.clamped} == {"window.quantiles"}


def test_a_model_reported_twice_is_taken_once() -> None:
    mr = agent_pb2.ModelReport(state=_state(), window=_window())
    out = check_report(_report(mr, mr), known={"m"})
    assert [mc.window is not None for mc in out.models] == [True, False]
    assert "twice" in str(out.models[1].rejected[0])


def test_a_duplicate_or_older_report_is_refused_whole() -> None:
    mr = agent_pb2.ModelReport(state=_state(), window=_window())
    for seq in (5, 4):
        out = check_report(_report(mr, seq=seq), known={"m"}, last_seq=5)
        assert [p.field for p in out.rejected] == ["seq"] and out.models == ()
    assert check_report(_report(mr, seq=6), known={"m"}, last_seq=5).rejected == ()
    assert check_report(_report(mr, seq=0), known={"m"}, last_seq=5).rejected == ()


def test_no_more_than_max_models_per_agent() -> None:
    known = {f"k{i}" for i in range(MAX_MODELS - 1)}
    mrs = [agent_pb2.ModelReport(state=_state(n), window=_window()) for n in ("a", "b", "k0")]
    out = check_report(_report(*mrs), known=known)
    assert [mc.window is not None for mc in out.models] == [True, False, True]


def test_impossible_gpu_readings_become_unknown_and_long_text_is_cut() -> None:
    r = _report(agent_pb2.ModelReport(state=_state(), window=_window()))
    r.gpu.utilization_pct = 250.0
    r.gpu.memory_used_mb = math.nan
    r.gpu.memory_total_mb = 16_000.0
    r.backend_message = "x" * 10_000
    r.models[0].state.message = "y" * 10_000
    out = check_report(r, known={"m"})
    assert out.telemetry.utilization_pct is None and out.telemetry.memory_used_mb is None
    assert out.telemetry.memory_total_mb == 16_000.0
    assert len(out.backend_message) == MAX_TEXT_CHARS
    assert {p.field for p in out.clamped} == {
        "gpu.utilization_pct",
        "gpu.memory_used_mb",
        "backend_message",
    }
    assert len(out.models[0].state.message) == MAX_TEXT_CHARS
    assert out.models[0].window is not None


_floats = st.floats() | st.sampled_from([0.0, -0.0, 1e-300, 1e308, 3_600_000.0])
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)


@st.composite
def _wire_reports(draw: st.DrawFn) -> agent_pb2.Report:
    r = agent_pb2.Report(seq=draw(_u64), backend_message=draw(st.text(max_size=5)))
    for name in ("utilization_pct", "memory_used_mb", "memory_total_mb", "power_w"):
        if draw(st.booleans()):
            setattr(r.gpu, name, draw(_floats))
    for _ in range(draw(st.integers(0, 3))):
        mr = r.models.add()
        mr.state.name = draw(st.sampled_from(["m", "", "n\x00"]) | st.text(max_size=4))
        mr.state.knobs.max_batch_size = draw(_u32)
        mr.state.knobs.instances = draw(_u32)
        mr.state.limits.max_instances = draw(_u32)
        mr.state.generation = draw(_u64)
        w = mr.window
        w.window_s, w.throughput_rps = draw(_floats), draw(_floats)
        w.completed, w.failed = draw(_u64), draw(_u64)
        for name in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "device_busy_share"):
            if draw(st.booleans()):
                setattr(w, name, draw(_floats))
        if draw(st.booleans()):
            w.batch_stats.add(
                batch_size=draw(_u32), count=draw(_u64), compute_ms_mean=draw(_floats)
            )
    return r


@settings(max_examples=300, deadline=None, database=None)
@given(report=_wire_reports(), last_seq=st.integers(0, 10))
def test_whatever_the_wire_carries_what_is_taken_is_sane(
    report: agent_pb2.Report, last_seq: int
) -> None:
    """Never raises; every window handed on is finite, in range and in quantile order."""
    out = check_report(report, known=set(), last_seq=last_seq)
    for mc in out.models:
        assert bool(mc.rejected) == (mc.window is None)
        if mc.window is None:
            continue
        w = mc.window
        assert math.isfinite(w.window_s) and w.window_s > 0
        assert math.isfinite(w.throughput_rps) and w.throughput_rps >= 0
        q = [v for v in (w.latency_p50_ms, w.latency_p95_ms, w.latency_p99_ms) if v is not None]
        assert all(math.isfinite(v) and v >= 0 for v in q) and q == sorted(q)
        assert state_problems(mc.state) == []
    t = out.telemetry
    for v in (t.utilization_pct, t.memory_used_mb, t.memory_total_mb, t.power_w):
        assert v is None or (math.isfinite(v) and v >= 0)


def test_a_hellos_texts_are_cut_and_an_impossible_gpu_memory_is_unknown() -> None:
    hello = agent_pb2.Hello(agent_id="a", node="n" * 5000, backend_kind="sim")
    hello.gpu.name, hello.gpu.memory_total_mb = "g" * 2000, math.nan
    fields, clamped = check_hello(hello)
    assert (len(fields.node), len(fields.gpu_name), fields.backend_kind) == (1000, 1000, "sim")
    assert fields.gpu_memory_total_mb is None
    assert {p.field for p in clamped} == {"node", "gpu.name", "gpu.memory_total_mb"}
    hello.gpu.memory_total_mb = 16_000.0
    assert check_hello(hello)[0].gpu_memory_total_mb == 16_000.0


@pytest.mark.parametrize(
    ("batch", "instances", "generation", "fields"),
    [
        (4, 2, 7, set()),
        (0, 2, 7, {"apply.knobs_in_force"}),
        (4, 2**32 - 1, 7, {"apply.knobs_in_force"}),
        (4, 2, 2**64 - 1, {"generation"}),
    ],
)
def test_an_apply_result_with_impossible_knobs_in_force_is_refused(
    batch: int, instances: int, generation: int, fields: set[str]
) -> None:
    """The loop takes an apply result's knobs as its own: they must be real knobs."""
    res = agent_pb2.ApplyResult(
        model="m",
        generation=generation,
        ok=False,
        knobs_in_force=common_pb2.Knobs(max_batch_size=batch, instances=instances),
        error="x" * 5000,
    )
    error, rejected, clamped = check_apply_result(res)
    assert {p.field for p in rejected} == fields
    assert len(error) == MAX_TEXT_CHARS and [p.field for p in clamped] == ["apply.error"]


def test_a_report_with_more_entries_than_max_models_is_read_up_to_that_with_one_clamp() -> None:
    mrs = [agent_pb2.ModelReport(state=_state(f"m{i}"), window=_window()) for i in range(300)]
    mrs[299].window.latency_p99_ms = math.nan  # past the cut: never read, never logged
    out = check_report(_report(*mrs), known=set())
    assert len(out.models) == MAX_MODELS and all(mc.window is not None for mc in out.models)
    assert [p.field for p in out.clamped] == ["models"]
