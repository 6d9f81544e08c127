"""The published DNNScaler re-implementation: batching search, MT loop, profiler."""

from __future__ import annotations

import pytest
from test_policies_support import obs

from dnnscaler.core.types import Approach, BatchStat, KnobLimits, Knobs
from dnnscaler.policies import paper_batching as pb
from dnnscaler.policies import paper_mt as mt
from dnnscaler.policies.paper import PaperPolicy, Phase

SLO = 50.0  # band [42.5, 50]


def test_dead_band_holds() -> None:
    s = pb.BinarySearch(lo=10, hi=40, idx=25)
    for lat in (42.5, 45.0, 50.0):
        assert pb.step(s, lat, SLO, top=126) == s


def test_binary_search_up_uses_ceil_and_down_uses_floor() -> None:
    s = pb.BinarySearch(lo=0, hi=126, idx=0)
    up = pb.step(s, 10.0, SLO, top=126)
    assert up == pb.BinarySearch(lo=0, hi=126, idx=63)  # ceil((0 + 126) / 2)
    down = pb.step(up, 60.0, SLO, top=126)
    assert down == pb.BinarySearch(lo=0, hi=63, idx=31)  # floor((0 + 63) / 2)
    up2 = pb.step(down, 10.0, SLO, top=126)
    assert up2 == pb.BinarySearch(lo=31, hi=63, idx=47)
    assert up2.batch_size == 48


def test_pinned_at_upper_bound_reopens_it() -> None:
    s = pb.BinarySearch(lo=20, hi=40, idx=40)  # bs == hi and still below the band
    assert pb.step(s, 10.0, SLO, top=126) == pb.BinarySearch(lo=40, hi=126, idx=83)


def test_pinned_at_lower_bound_reopens_it() -> None:
    s = pb.BinarySearch(lo=20, hi=40, idx=20)  # bs == lo and still over the SLO
    assert pb.step(s, 60.0, SLO, top=126) == pb.BinarySearch(lo=0, hi=20, idx=10)


def test_search_respects_the_server_limit() -> None:
    top = pb.max_index(16)
    s = pb.initial_search(16)
    for _ in range(10):
        s = pb.step(s, 1.0, SLO, top=top)
        assert 1 <= s.batch_size <= 16
    assert s.batch_size == 16


def test_matrix_completion_start_is_largest_k_under_the_slo() -> None:
    assert mt.initial_instances([5, 6, 8, 12, 20, 30], 13.0, top=10) == 4
    assert mt.initial_instances([5, 6, 8, 12, 20, 30], 13.0, top=2) == 2
    assert mt.initial_instances([60, 70], 13.0, top=10) == 1


def test_mt_adds_then_waits_five_seconds_plus_a_growing_bias() -> None:
    loop = mt.MtLoop(instances=2)
    loop, _ = mt.step(loop, 10.0, 20.0, SLO, top=10, bias_step_s=1.0)
    assert loop.instances == 3 and loop.wait_until_s == pytest.approx(15.0)
    same, why = mt.step(loop, 14.9, 20.0, SLO, top=10, bias_step_s=1.0)
    assert same == loop and "waiting" in why
    loop, _ = mt.step(loop, 15.0, 20.0, SLO, top=10, bias_step_s=1.0)
    assert loop.instances == 4 and loop.wait_until_s == pytest.approx(21.0)  # 5 + 1
    loop, _ = mt.step(loop, 21.0, 20.0, SLO, top=10, bias_step_s=1.0)
    assert loop.instances == 5 and loop.wait_until_s == pytest.approx(28.0)  # 5 + 2


def test_mt_removes_the_newest_then_holds_until_latency_or_slo_moves() -> None:
    loop = mt.MtLoop(instances=4, latency_before_add_ms=30.0)
    loop, _ = mt.step(loop, 100.0, 60.0, SLO, top=10, bias_step_s=1.0)
    assert loop.instances == 3 and loop.holding and loop.wait_until_s == pytest.approx(105.0)
    # 30 ms is below the band, but within [0.95 * 30, 60]: hysteresis holds.
    held, why = mt.step(loop, 106.0, 30.0, SLO, top=10, bias_step_s=1.0)
    assert held.instances == 3 and "hysteresis" in why
    # The latency dropped out of the remembered range: the loop resumes and adds.
    resumed, _ = mt.step(loop, 107.0, 20.0, SLO, top=10, bias_step_s=1.0)
    assert resumed.instances == 4 and not resumed.holding
    # The SLO moved: the loop resumes too (here: in band for the new SLO -> hold, released).
    moved, _ = mt.step(loop, 107.0, 30.0, 33.0, top=10, bias_step_s=1.0)
    assert not moved.holding


def test_mt_mean_of_the_last_hundred_latencies() -> None:
    recent: tuple[tuple[int, float], ...] = ()
    recent = mt.remember(recent, 300, 50.0)
    recent = mt.remember(recent, 60, 10.0)
    # The last 100: 60 at 10 ms and 40 at 50 ms.
    assert mt.recent_mean(recent) == pytest.approx((60 * 10 + 40 * 50) / 100)


def _probe_window(knobs: Knobs, compute_b1_ms: float, batch_ms: float) -> dict[int, BatchStat]:
    if knobs.max_batch_size > 1:
        return {knobs.max_batch_size: BatchStat(10, batch_ms)}
    return {1: BatchStat(50, compute_b1_ms)}


def _profile(mt_ms: float, batch8_ms: float) -> tuple[Approach, Knobs, float]:
    """Run the profiler against a fake server; returns approach, knobs and the elapsed time."""
    policy = PaperPolicy()
    knobs = Knobs(1, 1, 0)
    state = policy.initial_state(obs(0.0, knobs))
    t = 0.0
    while state.phase in (Phase.PROBE_BASE, Phase.PROBE_BATCH, Phase.PROBE_MT):
        t += 1.0
        comp = 10.0 if knobs.instances == 1 else mt_ms
        o = obs(t, knobs, mean_ms=comp, batch_stats=_probe_window(knobs, comp, batch8_ms))
        dec = policy.decide(o, state)
        state, knobs = dec.state, dec.knobs
        assert t < 60
    return dec.approach, knobs, t


def test_profiler_picks_multi_tenancy_when_instances_gain_more() -> None:
    # 8 instances at 12 ms each: 8 * 10 / 12 = 6.7x; batch 8 at 60 ms: 8 * 10 / 60 = 1.3x.
    approach, knobs, t = _profile(mt_ms=12.0, batch8_ms=60.0)
    assert approach is Approach.MULTI_TENANCY
    assert knobs.max_batch_size == 1 and knobs.instances > 1
    assert t <= 16.0  # three probes of 1 s settle + 3 s measurement, plus switching


def test_profiler_picks_batching_when_batches_gain_more() -> None:
    # 8 instances at 70 ms: 1.1x; batch 8 at 16 ms: 5x.
    approach, knobs, _ = _profile(mt_ms=70.0, batch8_ms=16.0)
    assert approach is Approach.BATCHING
    assert knobs == Knobs(1, 1, 0)


def test_paper_mt_phase_never_exceeds_memory() -> None:
    policy = PaperPolicy()
    limits = KnobLimits(max_instances=10)
    state = policy.initial_state(obs(0.0, Knobs()))
    from dataclasses import replace

    state = replace(state, phase=Phase.MULTI_TENANCY, loop=mt.MtLoop(instances=3))
    from dnnscaler.core.types import GpuTelemetry

    gpu = GpuTelemetry(memory_used_mb=3000, memory_total_mb=3500)
    o = obs(1.0, Knobs(1, 3, 0), mean_ms=5.0, limits=limits, gpu=gpu, instance_memory_mb=1000)
    dec = policy.decide(o, state)
    for t in range(2, 40):
        o = obs(float(t), dec.knobs, mean_ms=5.0, limits=limits, gpu=gpu, instance_memory_mb=1000)
        dec = policy.decide(o, dec.state)
        assert dec.knobs.instances <= 3
