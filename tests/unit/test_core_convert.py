"""Wire conversions: round trips, absent-means-unknown, and hostile values."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from dnnscaler.core.convert import (
    knobs_from_pb,
    knobs_to_pb,
    slo_from_pb,
    telemetry_from_pb,
    telemetry_to_pb,
    window_from_pb,
    window_to_pb,
)
from dnnscaler.core.types import (
    BatchStat,
    GpuTelemetry,
    InvalidValue,
    KnobLimits,
    Knobs,
    WindowStats,
    instances_that_fit,
)
from dnnscaler.v1 import common_pb2


def test_window_round_trip_keeps_unknowns_unknown() -> None:
    w = WindowStats(
        window_s=1.0,
        completed=10,
        throughput_rps=10.0,
        latency_p99_ms=12.5,
        batch_stats={4: BatchStat(2, 7.5), 1: BatchStat(2, 3.0)},
    )
    back = window_from_pb(window_to_pb(w))
    assert back == w
    assert back.latency_p50_ms is None and back.pending_requests is None
    assert back.device_busy_share is None
    busy = replace(w, device_busy_share=0.93)
    assert window_from_pb(window_to_pb(busy)) == busy


def test_telemetry_absent_is_none_not_zero() -> None:
    t = telemetry_from_pb(telemetry_to_pb(GpuTelemetry(memory_used_mb=0.0)))
    assert t.memory_used_mb == 0.0
    assert t.utilization_pct is None and t.power_w is None


def test_hostile_window_values_become_unknown() -> None:
    m = common_pb2.WindowStats(
        window_s=-1, throughput_rps=math.nan, latency_p99_ms=math.inf, latency_p95_ms=-3
    )
    m.batch_stats.add(batch_size=0, count=1, compute_ms_mean=1.0)
    m.batch_stats.add(batch_size=2, count=1, compute_ms_mean=math.nan)
    w = window_from_pb(m)
    assert w.window_s == 0.0 and w.throughput_rps == 0.0
    assert w.latency_p99_ms is None and w.latency_p95_ms is None
    assert dict(w.batch_stats) == {}
    for share in (1.5, -0.1, math.nan):
        assert (
            window_from_pb(common_pb2.WindowStats(device_busy_share=share)).device_busy_share
            is None
        )


def test_knobs_from_wire_reject_zero() -> None:
    assert knobs_from_pb(knobs_to_pb(Knobs(8, 2, 100))) == Knobs(8, 2, 100)
    with pytest.raises(InvalidValue) as e:
        knobs_from_pb(common_pb2.Knobs(max_batch_size=0, instances=1))
    assert e.value.field == "max_batch_size"
    with pytest.raises(InvalidValue) as e:
        knobs_from_pb(common_pb2.Knobs(max_batch_size=1, instances=0))
    assert e.value.field == "instances"


@pytest.mark.parametrize(
    ("latency_ms", "percentile", "field"),
    [
        (0, 99, "latency_ms"),
        (-1, 99, "latency_ms"),
        (math.nan, 99, "latency_ms"),
        (5, 0, "percentile"),
        (5, 100, "percentile"),
    ],
)
def test_slo_validation_names_field(latency_ms: float, percentile: float, field: str) -> None:
    with pytest.raises(InvalidValue) as e:
        slo_from_pb(common_pb2.Slo(latency_ms=latency_ms, percentile=percentile))
    assert e.value.field == field


def test_knob_validation_and_memory_fit() -> None:
    lim = KnobLimits(max_batch_size=32, max_instances=6)
    Knobs(32, 6).validate(lim)
    with pytest.raises(InvalidValue, match="max_batch_size"):
        Knobs(33, 1).validate(lim)
    assert Knobs(99, 0, -5).clamp(lim) == Knobs(32, 1, 0)
    gpu = GpuTelemetry(memory_used_mb=3000, memory_total_mb=4000)
    # 2 instances use 3000 MB now; 1000 MB free fits two more of 500 MB.
    assert instances_that_fit(lim, 2, 500.0, gpu) == 4
    assert instances_that_fit(lim, 2, None, gpu) == 6
    assert instances_that_fit(lim, 2, 500.0, GpuTelemetry()) == 6
