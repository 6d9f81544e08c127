"""Conversions between the typed values in ``dnnscaler.core.types`` and protobuf messages.

Kept in one place so that the controller, the agent and the admin CLI agree on units and on
"absent means unknown" (proto3 ``optional`` fields map to ``None``).
"""

from __future__ import annotations

import math

from dnnscaler.core.types import (
    BatchStat,
    GpuTelemetry,
    InvalidValue,
    KnobLimits,
    Knobs,
    Slo,
    WindowStats,
)
from dnnscaler.v1 import common_pb2


def knobs_to_pb(k: Knobs) -> common_pb2.Knobs:
    return common_pb2.Knobs(
        max_batch_size=k.max_batch_size, instances=k.instances, queue_delay_us=k.queue_delay_us
    )


def knobs_from_pb(m: common_pb2.Knobs) -> Knobs:
    """Knobs from the wire; raises ``InvalidValue`` for a zero batch size or instance count."""
    if m.max_batch_size < 1:
        raise InvalidValue("max_batch_size", f"must be >= 1, got {m.max_batch_size}")
    if m.instances < 1:
        raise InvalidValue("instances", f"must be >= 1, got {m.instances}")
    return Knobs(
        max_batch_size=int(m.max_batch_size),
        instances=int(m.instances),
        queue_delay_us=int(m.queue_delay_us),
    )


def limits_to_pb(lim: KnobLimits) -> common_pb2.KnobLimits:
    return common_pb2.KnobLimits(
        max_batch_size=lim.max_batch_size,
        max_instances=lim.max_instances,
        max_queue_delay_us=lim.max_queue_delay_us,
    )


def limits_from_pb(m: common_pb2.KnobLimits) -> KnobLimits:
    """Limits from the wire; zero fields (absent) fall back to the defaults."""
    d = KnobLimits()
    return KnobLimits(
        max_batch_size=int(m.max_batch_size) or d.max_batch_size,
        max_instances=int(m.max_instances) or d.max_instances,
        max_queue_delay_us=int(m.max_queue_delay_us) or d.max_queue_delay_us,
    )


def slo_to_pb(s: Slo) -> common_pb2.Slo:
    return common_pb2.Slo(percentile=s.percentile, latency_ms=s.latency_ms)


def slo_from_pb(m: common_pb2.Slo) -> Slo:
    """Validates: raises ``InvalidValue`` naming ``latency_ms`` or ``percentile``."""
    return Slo(latency_ms=float(m.latency_ms), percentile=float(m.percentile))


def _opt(m: object, name: str) -> float | None:
    return float(getattr(m, name)) if m.HasField(name) else None  # type: ignore[attr-defined]


def _measure(m: object, name: str) -> float | None:
    """An optional measurement; NaN, infinite or negative values from the wire are unknown."""
    v = _opt(m, name)
    return v if v is not None and math.isfinite(v) and v >= 0 else None


def _finite(v: float) -> float:
    return v if math.isfinite(v) and v >= 0 else 0.0


def telemetry_to_pb(t: GpuTelemetry) -> common_pb2.GpuTelemetry:
    m = common_pb2.GpuTelemetry()
    for name in ("utilization_pct", "memory_used_mb", "memory_total_mb", "power_w"):
        v = getattr(t, name)
        if v is not None:
            setattr(m, name, float(v))
    return m


def telemetry_from_pb(m: common_pb2.GpuTelemetry) -> GpuTelemetry:
    return GpuTelemetry(
        utilization_pct=_measure(m, "utilization_pct"),
        memory_used_mb=_measure(m, "memory_used_mb"),
        memory_total_mb=_measure(m, "memory_total_mb"),
        power_w=_measure(m, "power_w"),
    )


# A window's optional times (ms); with the busy share, its optional fields on the wire.
WINDOW_LATENCIES = (
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "queue_mean_ms",
    "compute_mean_ms",
)
_WINDOW_OPTIONAL = (*WINDOW_LATENCIES, "device_busy_share")


def window_to_pb(w: WindowStats) -> common_pb2.WindowStats:
    m = common_pb2.WindowStats(
        window_s=w.window_s,
        completed=w.completed,
        failed=w.failed,
        throughput_rps=w.throughput_rps,
    )
    for name in _WINDOW_OPTIONAL:
        v = getattr(w, name)
        if v is not None:
            setattr(m, name, float(v))
    if w.pending_requests is not None:
        m.pending_requests = int(w.pending_requests)
    for b in sorted(w.batch_stats):
        s = w.batch_stats[b]
        m.batch_stats.add(batch_size=b, count=s.count, compute_ms_mean=s.compute_ms_mean)
    return m


def window_from_pb(m: common_pb2.WindowStats) -> WindowStats:
    return WindowStats(
        window_s=_finite(m.window_s),
        completed=int(m.completed),
        failed=int(m.failed),
        throughput_rps=_finite(m.throughput_rps),
        latency_mean_ms=_measure(m, "latency_mean_ms"),
        latency_p50_ms=_measure(m, "latency_p50_ms"),
        latency_p95_ms=_measure(m, "latency_p95_ms"),
        latency_p99_ms=_measure(m, "latency_p99_ms"),
        queue_mean_ms=_measure(m, "queue_mean_ms"),
        compute_mean_ms=_measure(m, "compute_mean_ms"),
        pending_requests=int(m.pending_requests) if m.HasField("pending_requests") else None,
        batch_stats={
            int(s.batch_size): BatchStat(
                count=int(s.count), compute_ms_mean=float(s.compute_ms_mean)
            )
            for s in m.batch_stats
            if s.batch_size >= 1 and math.isfinite(s.compute_ms_mean) and s.compute_ms_mean >= 0
        },
        device_busy_share=_share(m, "device_busy_share"),
    )


def _share(m: object, name: str) -> float | None:
    """An optional share in 0..1; anything else from the wire is unknown."""
    v = _measure(m, name)
    return v if v is not None and v <= 1.0 else None
