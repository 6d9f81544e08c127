"""Hand-built observations shared by the policy tests (no tests here)."""

from __future__ import annotations

from dnnscaler.core.types import (
    BatchStat,
    GpuTelemetry,
    KnobLimits,
    Knobs,
    Observation,
    Slo,
    WindowStats,
)
from dnnscaler.sim.profile import Profile
from dnnscaler.sim.server import SimServer


def obs(
    now_s: float,
    knobs: Knobs,
    *,
    mean_ms: float | None = 10.0,
    p95_ms: float | None = None,
    p99_ms: float | None = None,
    slo_ms: float = 50.0,
    percentile: float = 99.0,
    completed: int = 100,
    window_s: float = 1.0,
    limits: KnobLimits | None = None,
    batch_stats: dict[int, BatchStat] | None = None,
    compute_ms: float | None = None,
    pending: int = 0,
    gpu: GpuTelemetry | None = None,
    instance_memory_mb: float | None = None,
) -> Observation:
    """One window's observation; latencies default to the mean when not given."""
    if mean_ms is None:
        completed = 0
    p95 = p95_ms if p95_ms is not None else mean_ms
    p99 = p99_ms if p99_ms is not None else p95
    return Observation(
        now_s=now_s,
        model="m",
        slo=Slo(slo_ms, percentile),
        knobs=knobs,
        limits=limits or KnobLimits(),
        window=WindowStats(
            window_s=window_s,
            completed=completed,
            throughput_rps=completed / window_s,
            latency_mean_ms=mean_ms,
            latency_p50_ms=mean_ms,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
            compute_mean_ms=compute_ms,
            pending_requests=pending,
            batch_stats=batch_stats or {},
        ),
        gpu=gpu or GpuTelemetry(),
        instance_memory_mb=instance_memory_mb,
    )


def sim_observation(srv: SimServer, prof: Profile, slo: Slo) -> Observation:
    """What a policy is given after the simulated server's latest window."""
    return Observation(
        srv.now_s,
        prof.name,
        slo,
        srv.knobs,
        prof.limits(),
        srv.collect_window(),
        srv.gpu_telemetry(),
        prof.instance_memory_mb,
    )
