"""Batcher rules, determinism, knob-change timing and telemetry of the simulated server."""

from __future__ import annotations

import pytest

from dnnscaler.core.types import InvalidValue, Knobs
from dnnscaler.sim.profile import Profile
from dnnscaler.sim.server import ReconfigTiming, SimServer

FLAT = Profile(
    name="test/flat",
    lat_k_ms=(10.0, 10.0, 10.0, 10.0),
    batch_alpha=0.1,
    max_batch_size=16,
    jitter_cv=0.0,
    instance_memory_mb=1000.0,
    gpu_memory_mb=4000.0,
)


def _server(knobs: Knobs, **kw: object) -> SimServer:
    return SimServer(FLAT, knobs, seed=7, **kw)  # type: ignore[arg-type]


def _put(srv: SimServer, times: list[float]) -> None:
    """Inject arrivals at exact times (white-box: the batcher reads the arrival list)."""
    srv._arr.extend(times)


def test_zero_delay_dispatches_at_once_with_what_is_queued() -> None:
    srv = _server(Knobs(max_batch_size=8, instances=1, queue_delay_us=0))
    _put(srv, [0.0, 0.001, 0.002, 0.003])
    srv.advance_to(1.0)
    w = srv.collect_window()
    # First request alone (instance idle), the other three queue behind it as one batch.
    assert dict((b, s.count) for b, s in w.batch_stats.items()) == {1: 1, 3: 1}
    assert w.batch_stats[1].compute_ms_mean == pytest.approx(10.0)
    assert w.batch_stats[3].compute_ms_mean == pytest.approx(12.0)


def test_queue_delay_waits_for_the_oldest_then_dispatches() -> None:
    srv = _server(Knobs(max_batch_size=8, instances=1, queue_delay_us=5000))
    _put(srv, [0.0, 0.001, 0.002])
    srv.advance_to(1.0)
    w = srv.collect_window()
    assert dict((b, s.count) for b, s in w.batch_stats.items()) == {3: 1}
    # Latency of the first request = 5 ms wait + 12 ms compute.
    assert w.latency_p99_ms is not None and w.latency_p99_ms == pytest.approx(17.0, abs=0.05)
    assert w.queue_mean_ms == pytest.approx((5 + 4 + 3) / 3, abs=0.01)


def test_full_batch_dispatches_before_the_delay() -> None:
    srv = _server(Knobs(max_batch_size=2, instances=1, queue_delay_us=50_000))
    _put(srv, [0.0, 0.001, 0.002])
    srv.advance_to(0.0015)
    assert srv.pending_requests() == 2
    srv.advance_to(1.0)
    w = srv.collect_window()
    assert w.batch_stats[2].count == 1 and w.batch_stats[1].count == 1
    assert w.completed == 3 and w.failed == 0


def test_instances_run_in_parallel() -> None:
    srv = _server(Knobs(max_batch_size=1, instances=3))
    _put(srv, [0.0, 0.0, 0.0])
    srv.advance_to(0.0101)
    assert srv.collect_window().completed == 3


def test_contention_slows_running_batches() -> None:
    prof = Profile(name="t/c", lat_k_ms=(10.0, 20.0), batch_alpha=0.0, jitter_cv=0.0)
    srv = SimServer(prof, Knobs(max_batch_size=1, instances=2), seed=0)
    srv._arr.extend([0.0, 0.005])
    srv.advance_to(1.0)
    w = srv.collect()
    # First runs 5 ms alone (half done), then both at half speed: the first ends at 15 ms
    # (latency 15); the second is half done by then and finishes alone 5 ms later (latency 15).
    assert w.latencies_ms.tolist() == pytest.approx([15.0, 15.0])


def test_same_seed_same_windows_and_different_seed_differs() -> None:
    def run(seed: int) -> list[float]:
        srv = SimServer(FLAT, Knobs(4, 2, 1000), seed=seed)
        srv.set_arrival_rate(250.0)
        out = []
        for i in range(1, 6):
            srv.advance_to(float(i))
            out.append(srv.collect_window().latency_p99_ms or 0.0)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_instance_change_is_quick_and_batch_change_waits_for_reload() -> None:
    timing = ReconfigTiming(instance_change_s=0.2, reload_s=1.5)
    srv = _server(Knobs(1, 1, 0), timing=timing)
    srv.set_arrival_rate(50.0)
    srv.advance_to(1.0)
    srv.set_knobs(Knobs(1, 2, 0))
    srv.advance_to(1.19)
    assert srv.knobs.instances == 1
    srv.advance_to(1.21)
    assert srv.knobs.instances == 2
    srv.set_knobs(Knobs(8, 2, 0))
    srv.advance_to(2.7)
    assert srv.knobs.max_batch_size == 1 and srv.pending_knobs == Knobs(8, 2, 0)
    # Both configs are resident during the reload (capped at the GPU's memory).
    assert srv.gpu_telemetry().memory_used_mb == 4000.0
    srv.advance_to(2.72)
    assert srv.knobs == Knobs(8, 2, 0) and srv.pending_knobs is None
    assert srv.gpu_telemetry().memory_used_mb == 2000.0


def test_no_request_is_lost_across_reconfigurations() -> None:
    srv = _server(Knobs(1, 1, 0))
    srv.set_arrival_rate(150.0)
    total = 0
    for i, k in enumerate([Knobs(4, 4, 0), Knobs(1, 2, 0), Knobs(16, 1, 2000), Knobs(2, 3, 0)]):
        srv.advance_to(2.0 * (i + 1))
        srv.set_knobs(k)
        total += srv.collect_window().completed
    srv.set_arrival_rate(0.0)
    srv.advance_to(30.0)
    total += srv.collect_window().completed
    assert srv.pending_requests() == 0
    assert total == srv.arrived_total > 500


def test_interference_slows_service() -> None:
    srv = _server(Knobs(1, 1, 0))
    srv.set_closed_loop(1)
    srv.advance_to(1.0)
    base = srv.collect_window().compute_mean_ms
    srv.set_interference(2.0)
    srv.advance_to(1.1)
    srv.collect_window()
    srv.advance_to(2.0)
    slow = srv.collect_window().compute_mean_ms
    assert base is not None and slow is not None
    assert slow == pytest.approx(2 * base, rel=0.01)


def test_bad_knobs_and_controls_are_rejected() -> None:
    srv = _server(Knobs(1, 1, 0))
    with pytest.raises(InvalidValue, match="instances"):
        srv.set_knobs(Knobs(1, 5, 0))  # 4 fit in memory
    with pytest.raises(InvalidValue, match="max_batch_size"):
        srv.set_knobs(Knobs(32, 1, 0))
    with pytest.raises(InvalidValue, match="rate_rps"):
        srv.set_arrival_rate(-1.0)
    with pytest.raises(InvalidValue, match="interference"):
        srv.set_interference(0.0)


def test_utilization_and_memory_telemetry() -> None:
    srv = _server(Knobs(1, 2, 0))
    srv.set_closed_loop(1)
    srv.advance_to(2.0)
    srv.collect_window()
    tel = srv.gpu_telemetry()
    assert tel.utilization_pct == pytest.approx(100.0)
    assert tel.memory_used_mb == 2000.0 and tel.memory_total_mb == 4000.0
