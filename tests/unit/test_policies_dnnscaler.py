"""Our default policy: legality for arbitrary observations, and stability on the sim."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policies_support import obs, sim_observation

from dnnscaler.bench.online import RunTrace
from dnnscaler.core.types import (
    BatchStat,
    GpuTelemetry,
    KnobLimits,
    Knobs,
    Observation,
    Slo,
    WindowStats,
    instances_that_fit,
)
from dnnscaler.policies import decision_trace as dt
from dnnscaler.policies.batch_law import BatchLaw
from dnnscaler.policies.capacity_model import capacity_rps, predicted_tail_ms
from dnnscaler.policies.config_records import ConfigRecord, headroom_rps, rescale_records
from dnnscaler.policies.dnnscaler_policy import (
    DnnScalerPolicy,
    DnnScalerState,
    PlanEntry,
    _batch_reach,
    _half_batch,
    _useful,
    batch_grid,
    fit_during_change,
    plan_summary,
)
from dnnscaler.policies.latency_surface import Surface
from dnnscaler.sim.profile import shipped_profiles
from dnnscaler.sim.server import SimServer

finite = st.floats(min_value=0.01, max_value=5000.0, allow_nan=False)


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    limits = KnobLimits(
        max_batch_size=draw(st.integers(1, 256)),
        max_instances=draw(st.integers(1, 16)),
        max_queue_delay_us=draw(st.integers(0, 100_000)),
    )
    knobs = Knobs(
        draw(st.integers(1, limits.max_batch_size)),
        draw(st.integers(1, limits.max_instances)),
        draw(st.integers(0, limits.max_queue_delay_us)),
    )
    stats = draw(
        st.dictionaries(
            st.integers(1, limits.max_batch_size),
            st.builds(BatchStat, st.integers(0, 1000), finite),
            max_size=4,
        )
    )
    completed = draw(st.integers(0, 5000))
    lat = draw(st.none() | finite) if completed else None
    total = draw(st.none() | st.floats(1000, 80_000))
    gpu = GpuTelemetry(
        memory_total_mb=total,
        memory_used_mb=None if total is None else draw(st.floats(0, total)),
    )
    return Observation(
        now_s=draw(st.floats(0, 1e6)),
        model="m",
        slo=Slo(draw(finite), draw(st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9]))),
        knobs=knobs,
        limits=limits,
        window=WindowStats(
            window_s=draw(st.floats(0.1, 10.0)),
            completed=completed,
            throughput_rps=draw(st.floats(0, 1e5)),
            latency_mean_ms=lat,
            latency_p50_ms=lat,
            latency_p95_ms=lat,
            latency_p99_ms=lat,
            compute_mean_ms=draw(st.none() | finite),
            pending_requests=draw(st.none() | st.integers(0, 100_000)),
            batch_stats=stats,
        ),
        gpu=gpu,
        instance_memory_mb=draw(st.none() | st.floats(100, 20_000)),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(observations(), min_size=1, max_size=6))
def test_never_outside_limits_or_memory(seq: list[Observation]) -> None:
    policy = DnnScalerPolicy()
    state = policy.initial_state(seq[0])
    prev_target = state.target
    now = seq[0].now_s
    for o in seq:
        now += abs(o.now_s) % 5 + 0.5  # time moves forward
        o = Observation(
            now, o.model, o.slo, o.knobs, o.limits, o.window, o.gpu, o.instance_memory_mb
        )
        dec = policy.decide(o, state)
        state = dec.state
        dec.knobs.validate(o.limits)
        # What fits counts the memory a change under way holds (both configs for a reload).
        fit = fit_during_change(o, dec.knobs)
        assert dec.knobs.instances <= fit
        if dec.knobs.instances > max(o.knobs.instances, prev_target.instances):
            # A new, larger target only grows into memory that is free now.
            grow = instances_that_fit(o.limits, o.knobs.instances, o.instance_memory_mb, o.gpu)
            assert dec.knobs.instances <= grow
        prev_target = dec.knobs
        asdict(state)  # persistable


def test_holds_without_completed_requests() -> None:
    policy = DnnScalerPolicy()
    o = obs(1.0, Knobs(4, 2, 0), mean_ms=None)
    dec = policy.decide(o, policy.initial_state(o))
    assert dec.knobs == Knobs(4, 2, 0)


def test_capacity_model_orders_batching_for_a_batching_friendly_surface() -> None:
    # Cheap extra samples (alpha 0.05): batch 16 must beat batch 1 by a wide margin.
    law = BatchLaw.affine(0.05)
    b1 = capacity_rps(1, 1, 10.0, law, 50.0, 0.99)
    b16 = capacity_rps(1, 16, 10.0, law, 50.0, 0.99)
    assert b16 > 4 * b1
    # A tail bound below the service time admits nothing.
    assert capacity_rps(1, 16, 10.0, law, 5.0, 0.99) == 0.0
    # The predicted tail grows with load and is unbounded past saturation.
    t1 = predicted_tail_ms(20.0, 1, 1, 10.0, law, 0.99)
    t2 = predicted_tail_ms(80.0, 1, 1, 10.0, law, 0.99)
    assert t1 < t2 and math.isinf(predicted_tail_ms(150.0, 1, 1, 10.0, law, 0.99))


def test_batch_law_interpolates_the_table_and_extends_its_last_piece() -> None:
    law = BatchLaw(((1.0, 1.0), (2.0, 2.3), (4.0, 2.7), (8.0, 3.5)), 0.2)
    assert law.factor(1.0) == 1.0
    assert law.factor(3.0) == pytest.approx(2.5)
    assert law.factor(8.0) == pytest.approx(3.5)
    assert law.factor(16.0) == pytest.approx(3.5 + 0.2 * 8)
    # The fixed point B = k f(B): at k f(1) <= 1 it is 1; on a piece it solves exactly.
    assert law.fixed_point(0.5) == 1.0
    for k in (1.2, 2.0, 3.0, 4.0):
        b = law.fixed_point(k)
        assert b is not None and b == pytest.approx(k * law.factor(b))
    # A slope the batch can never outgrow: no fixed point past the table.
    assert law.fixed_point(6.0) is None
    # The affine law has the closed form B = k (1 - a) / (1 - k a).
    aff = BatchLaw.affine(0.25)
    assert aff.fixed_point(2.0) == pytest.approx(2.0 * 0.75 / 0.5)


def test_surface_learns_a_non_affine_batch_table() -> None:
    # Measured on a 2-core CPU (numpy's vector path at batch 1): 3.0 / 6.9 / 8.2 / 10.7 ms.
    # One slope fitted over all four sizes would miss batch 8 by a wide margin; the table
    # reproduces every size, and batch 16 follows the last piece.
    measured = {1: 3.0, 2: 6.9, 4: 8.2, 8: 10.7}
    s = Surface()
    for t in range(1, 11):
        w = WindowStats(
            window_s=1.0,
            completed=100,
            batch_stats={b: BatchStat(10, c) for b, c in measured.items()},
        )
        s = s.observe(w, 1, float(t), memory_s=60.0)
    lat = s.curve(1)[0]
    for b, c in measured.items():
        assert lat * s.law.factor(b) == pytest.approx(c, rel=0.05), b
    assert lat * s.law.factor(16) == pytest.approx(10.7 + 2 * (10.7 - 8.2), rel=0.1)


def test_multi_instance_windows_do_not_teach_a_batch_law_their_contention() -> None:
    # With two instances, big batches form when the queue is long, i.e. when the other
    # instance is busy too: they look slower than the batch law makes them. The law learned
    # at one instance (alpha 0.2) keeps its shape.
    s = Surface()
    for t in range(1, 6):
        w = WindowStats(
            window_s=1.0,
            completed=130,
            batch_stats={b: BatchStat(10, 8.0 * (1 + 0.2 * (b - 1))) for b in (1, 4, 8)},
        )
        s = s.observe(w, 1, float(t), memory_s=60.0)
    for t in range(6, 16):
        w = WindowStats(
            window_s=1.0,
            completed=400,
            batch_stats={1: BatchStat(10, 8.0 * 1.2), 8: BatchStat(30, 8.0 * 2.4 * 1.8)},
        )
        s = s.observe(w, 2, float(t), memory_s=60.0)
    # The two-instance windows alone say f(8) = 2.4 * 1.8 / 1.2 = 3.6.
    assert s.law.factor(4) == pytest.approx(1.6, rel=0.1)
    assert s.law.factor(8) == pytest.approx(2.4, rel=0.15)


def test_surface_learns_the_slope_across_windows_of_one_batch_size_each() -> None:
    # Under an overload every batch is full: each window runs one size. The slope must still
    # be learned from a change of size (here a per-item cost, alpha = 1), not stay the prior.
    s = Surface()
    for t, b in enumerate((8, 8, 16, 16), start=1):
        w = WindowStats(window_s=1.0, completed=8 * b, batch_stats={b: BatchStat(8, 10.0 * b)})
        s = s.observe(w, 1, float(t), memory_s=60.0)
    assert abs(s.alpha - 1.0) < 0.05


def test_a_second_scale_model_learns_its_batch_law_from_few_batches_per_window() -> None:
    # A video model (batch 1: 1.3 s, batch 2: 1.8 x that) in 13 s windows at 4 instances:
    # each window runs a handful of batches, all it can. Weighted at 1/20 of a window per
    # batch, batch 2 was not a knot after 10 windows (the law stayed the prior, 1.3x at
    # batch 2, and batching looked like a gain); and with a 60 s half-life (under five such
    # windows) it never became one.
    policy = DnnScalerPolicy()
    w = WindowStats(
        window_s=13.0,
        completed=7,
        batch_stats={1: BatchStat(3, 1300.0), 2: BatchStat(2, 1300.0 * 1.8)},
    )
    obs = Observation(13.0, "m", Slo(5000.0, 99.0), Knobs(2, 4, 0), KnobLimits(8, 8), w)
    memory = policy._surface_memory(obs)
    assert memory == pytest.approx(60 * 13.0)
    s = Surface()
    for t in range(1, 11):
        s = s.observe(w, 4, 13.0 * t, memory_s=memory)
    assert s.law.factor(2) == pytest.approx(1.8, rel=0.05)


def _window_obs(t: float, knobs: Knobs, thr: float, p99: float, pending: int) -> Observation:
    """A one-second window at ``knobs`` (batches of 4 taking 8 ms), SLO p99 <= 50 ms."""
    w = WindowStats(
        window_s=1.0,
        completed=int(thr),
        throughput_rps=thr,
        latency_p99_ms=p99,
        pending_requests=pending,
        batch_stats={4: BatchStat(int(thr) // 4, 8.0)},
    )
    limits = KnobLimits(max_batch_size=16, max_instances=4)
    return Observation(t, "m", Slo(50.0, 99.0), knobs, limits, w)


def _changed_to(policy: DnnScalerPolicy, k: Knobs) -> DnnScalerState:
    """The policy's state just after it moved from b16 n1 (serving 600 rps) to ``k``."""
    state = policy.initial_state(_window_obs(0.0, Knobs(16, 1, 0), 600.0, 20.0, 0))
    return replace(state, target=k, changed_s=0.0, in_force_s=None)


def test_the_first_window_after_a_stalling_reload_sets_no_ceiling() -> None:
    # A reload stalled the server for a window; the next one drains what queued meanwhile and
    # its tail breaks the SLO. That is the change's cost: the config gets no ceiling and the
    # policy does not move away from it.
    policy = DnnScalerPolicy()
    k = Knobs(8, 2, 0)
    state = _changed_to(policy, k)
    d = policy.decide(_window_obs(1.0, k, 3.0, 90.0, 40), state)  # the stall: measuring
    d = policy.decide(_window_obs(2.0, k, 620.0, 92.0, 5), d.state)  # drains its backlog
    assert d.knobs == k
    assert "draining" in d.reason
    assert all(r.ceiling_rps == 0.0 for r in d.state.records)


def test_the_first_window_after_a_change_over_the_slo_is_watched_and_a_second_acts() -> None:
    # Fresh clone 61 (wide_mlp): the first window after the reload to b8 n2 read p99 122.8 ms
    # of 65.2 with its backlog not shrinking (so not "draining"), recorded b8 n2's ceiling
    # and the policy retreated from the oracle's config. That window still carries the
    # reload's cost: it is watched (no ceiling, no move); a second one over the SLO acts.
    policy = DnnScalerPolicy()
    k = Knobs(8, 2, 0)
    state = _changed_to(policy, k)
    d = policy.decide(_window_obs(1.0, k, 400.0, 40.0, 30), state)  # in force: measuring
    d = policy.decide(_window_obs(2.0, k, 600.0, 92.0, 40), d.state)  # the first window
    assert d.knobs == k
    assert "first window after the change" in d.reason and "watching" in d.reason
    assert all(r.ceiling_rps == 0.0 for r in d.state.records)
    d = policy.decide(_window_obs(3.0, k, 600.0, 92.0, 50), d.state)  # a second one acts
    assert any(r.ceiling_rps > 0.0 for r in d.state.records)


def test_a_reload_window_far_over_the_slo_is_watched_unless_its_backlog_grows() -> None:
    # Fresh clone 64 (resnet_small): an 8 s reload to b8 n2 (the oracle's config), then a
    # first window at p99 1,374 ms of 214.5 (6.4 x) at 494 rps; watched only up to 2 x, it
    # set b8 n2's ceiling and the policy retreated to b16 n1 (0.61 of the oracle). Past 2 x
    # the window is still watched while its backlog does not grow; a growing one is an
    # overload and is acted on at once (the sim's interference test needs that).
    policy = DnnScalerPolicy()
    k = Knobs(8, 2, 0)
    d = policy.decide(_window_obs(1.0, k, 400.0, 40.0, 30), _changed_to(policy, k))
    watched = policy.decide(_window_obs(2.0, k, 500.0, 320.0, 32), d.state)  # flat backlog
    assert watched.knobs == k and "watching" in watched.reason, watched.reason
    assert all(r.ceiling_rps == 0.0 for r in watched.state.records)
    grown = policy.decide(_window_obs(2.0, k, 500.0, 320.0, 130), d.state)  # +100 queued
    assert "watching" not in grown.reason
    assert any(r.ceiling_rps > 0.0 for r in grown.state.records)


def test_one_marginal_window_at_a_roomy_load_is_watched_and_a_second_acts() -> None:
    # At a load far inside the config's predicted capacity, one window 5 % over the SLO is
    # watched (no ceiling, no move); a second one in a row is acted on (ceiling recorded).
    policy = DnnScalerPolicy()
    k = Knobs(8, 2, 0)
    d = None
    state = policy.initial_state(_window_obs(0.0, k, 300.0, 20.0, 0))
    for t in range(1, 12):
        d = policy.decide(_window_obs(float(t), k, 300.0, 20.0, 0), state)
        state = d.state
    assert d is not None and d.knobs == k
    d = policy.decide(_window_obs(12.0, k, 300.0, 52.5, 0), state)
    assert d.knobs == k and "watching" in d.reason
    assert all(r.ceiling_rps == 0.0 for r in d.state.records)
    d = policy.decide(_window_obs(13.0, k, 300.0, 52.5, 0), d.state)
    assert any(r.ceiling_rps > 0.0 for r in d.state.records)


def test_plan_summary_ranks_the_plan_and_lists_what_was_measured() -> None:
    state = DnnScalerState(
        plan=(PlanEntry(4, 2, 1072.4), PlanEntry(8, 2, 1366.0), PlanEntry(16, 1, 900.0)),
        records=(ConfigRecord(16, 1, floor_rps=559.0), ConfigRecord(4, 2, ceiling_rps=604.0)),
    )
    assert plan_summary(state) == (
        "plan (rps) b8n2=1366, b4n2=1072, b16n1=900; "
        "measured b16n1 floor 559 ceiling 0, b4n2 floor 0 ceiling 604"
    )
    assert plan_summary(DnnScalerState()) == "plan (rps) -; measured -"


def test_batch_grid() -> None:
    assert batch_grid(1) == (1,)
    assert batch_grid(48) == (1, 2, 4, 8, 16, 32, 48)
    assert batch_grid(128)[-1] == 128


def _drive(
    profile_name: str,
    rate_frac: float,
    windows: int,
    seed: int = 1,
    slo_factor_at: Callable[[int], float] = lambda i: 1.0,
    interference_at: Callable[[int], float] = lambda i: 1.0,
) -> list[tuple[Knobs, float | None, float]]:
    """Run the policy on the simulated server at a fixed load.

    Returns (knobs in force, p99 latency, SLO) per window.
    """
    prof = shipped_profiles()[profile_name]
    srv = SimServer(prof, Knobs(prof.max_batch_size, 1, 0), seed=seed)
    # Offered load: a fraction of what batch-1 multi-tenancy or batching could do.
    best = max(prof.throughput_rps(b, n) for b in (1, 8) for n in range(1, prof.max_instances + 1))
    srv.set_arrival_rate(rate_frac * best)
    policy = DnnScalerPolicy()
    state = None
    out = []
    for i in range(windows):
        srv.set_interference(interference_at(i))
        srv.advance_to(float(i + 1))
        slo = Slo(prof.default_slo_ms * slo_factor_at(i), 99.0)
        o = sim_observation(srv, prof, slo)
        if state is None:
            state = policy.initial_state(o)
        dec = policy.decide(o, state)
        state = dec.state
        if dec.knobs != srv.knobs and dec.knobs != srv.pending_knobs:
            srv.set_knobs(dec.knobs)
        out.append((o.knobs, o.latency_ms, slo.latency_ms))
    return out


def _changes(run: list[tuple[Knobs, float | None, float]]) -> int:
    return sum(1 for a, b in itertools.pairwise(run) if a[0] != b[0])


def _violations(run: list[tuple[Knobs, float | None, float]]) -> int:
    return sum(1 for _, lat, slo in run if lat is not None and lat > slo)


def test_steady_state_knob_changes_are_bounded() -> None:
    # Constant load: after the first minute the config must settle (at most one change in
    # the next minute), on a batching-friendly and on a multi-tenancy-friendly network.
    for name in ("caltech/Inc-V1", "imagenet/Mob-V1-025"):
        run = _drive(name, 0.4, 120)
        assert _changes(run[:60]) >= 1, name  # it did move away from the defaults
        assert _changes(run[60:]) <= 1, name
        assert _violations(run[30:]) <= 2, name


def test_readapts_when_the_slo_is_halved() -> None:
    # The load is ~65 % of the best static config's capacity under the halved SLO, where
    # that config (b=4, n=2) breaks the SLO in 1 of 40 one-second windows.
    run = _drive("caltech/Inc-V1", 0.18, 100, slo_factor_at=lambda i: 1.0 if i < 40 else 0.5)
    before = run[39][0]
    assert any(k != before for k, _, _ in run[40:55])  # re-planned for the new SLO
    assert _violations(run[60:]) <= 4
    assert _changes(run[70:]) <= 1


def test_readapts_to_interference() -> None:
    # Another tenant slows the GPU by 1.6x at window 40.
    run = _drive("imagenet/Mob-V1-025", 0.3, 100, interference_at=lambda i: 1.0 if i < 40 else 1.6)
    assert _violations(run[60:]) <= 2
    assert _changes(run[70:]) <= 1


def test_holds_while_a_backlog_drains() -> None:
    # A backlog inherited from an overloaded config drains at the config in force: the tail
    # is far over the SLO, but it is the backlog's wait, not this config's capacity. The
    # policy holds and records no ceiling; the same tail with a growing backlog is acted on.
    policy = DnnScalerPolicy()
    limits = KnobLimits(max_batch_size=8, max_instances=8)
    slo = Slo(60.0, 99.0)
    k = Knobs(1, 4, 0)

    def window(t: float, pending: int, p99: float) -> Observation:
        w = WindowStats(
            window_s=1.0,
            completed=300,
            throughput_rps=300.0,
            latency_mean_ms=p99 / 2,
            latency_p50_ms=p99 / 2,
            latency_p95_ms=p99,
            latency_p99_ms=p99,
            pending_requests=pending,
            batch_stats={1: BatchStat(300, 11.0)},
        )
        return Observation(t, "m", slo, k, limits, w)

    o = window(0.0, 600, 2000.0)
    state = replace(policy.initial_state(o), last_pending=600)  # seen before the windows below
    for t, pending in ((2.0, 450), (3.0, 300), (4.0, 150)):
        dec = policy.decide(window(t, pending, 2000.0), state)
        state = dec.state
        assert dec.knobs == k and "draining" in dec.reason
    assert not any(r.ceiling_rps > 0 for r in state.records)
    # The drain's last window: the rest of the backlog went (8 requests, under DRAIN_SHARE
    # of 300 completions) and its tail is still the backlog's (fresh clone 82, serial_io).
    end = replace(state, last_pending=8)
    dec = policy.decide(window(5.0, 0, 2000.0), end)
    assert dec.knobs == k and "draining" in dec.reason, dec.reason
    # Not after a window that was not draining, nor with the backlog not shrinking.
    dec = policy.decide(window(5.0, 0, 2000.0), replace(end, draining=False))
    assert "draining" not in dec.reason
    dec = policy.decide(window(5.0, 400, 2000.0), state)
    assert "draining" not in dec.reason


def test_explores_instances_one_measured_step_at_a_time() -> None:
    # Only one instance ever measured: the contention of 3+ instances is the prior's guess
    # (GPU curves), so a planned move goes to at most 2 instances, however good the prior
    # makes the larger counts look.
    policy = DnnScalerPolicy()
    limits = KnobLimits(max_batch_size=1, max_instances=10)
    slo = Slo(60.0, 99.0)
    k = Knobs(1, 1, 0)
    state = None
    for t in range(1, 30):
        w = WindowStats(
            window_s=1.0,
            completed=60,
            throughput_rps=60.0,
            latency_mean_ms=12.0,
            latency_p50_ms=11.0,
            latency_p95_ms=20.0,
            latency_p99_ms=25.0,
            pending_requests=0,
            batch_stats={1: BatchStat(60, 10.0)},
        )
        o = Observation(float(t), "m", slo, k, limits, w)
        state = policy.initial_state(o) if state is None else state
        dec = policy.decide(o, state)
        state = dec.state
        assert dec.knobs.instances <= 2
        if dec.knobs != k:
            break
    assert dec.knobs.instances == 2  # it did explore


def _rising_load_run(busy: float | None) -> list[Knobs]:
    """b8 n2 under a load rising past its capacity (960 rps), the device at ``busy``."""
    policy = DnnScalerPolicy()
    limits = KnobLimits(max_batch_size=16, max_instances=4)
    k, state, pending, out = Knobs(8, 2, 0), None, 0, []
    for t in range(1, 30):
        load = 600.0 + 20.0 * t
        thr = min(load, 960.0)
        pending += int(load - thr)
        w = WindowStats(
            window_s=1.0,
            completed=int(thr),
            throughput_rps=thr,
            latency_p99_ms=30.0 if load < 900 else load - 870.0,
            pending_requests=pending,
            batch_stats={8: BatchStat(int(thr) // 8, 16.0 * min(1.0, thr / 900.0))},
            device_busy_share=busy if busy is None or thr >= 900 else 0.8,
        )
        o = Observation(float(t), "m", Slo(50.0, 99.0), k, limits, w)
        state = policy.initial_state(o) if state is None else state
        dec = policy.decide(o, state)
        state, k = dec.state, dec.knobs
        out.append(k)
    return out


def test_a_saturated_device_gets_no_more_instances() -> None:
    # On a device whose compute is all in use (2 instances on 2 CPU cores), a third instance
    # only time-shares it. Without the busy share the contention prior (GPU curves) promises
    # a gain and the overload guard adds an instance; with it, the policy stays at 2.
    assert max(k.instances for k in _rising_load_run(None)) > 2
    assert max(k.instances for k in _rising_load_run(0.97)) == 2


def test_surface_bounds_contention_past_a_saturated_busy_count() -> None:
    def learn(busy: float | None) -> Surface:
        s = Surface()
        for t in range(1, 6):
            # 2 instances, ~1.95 busy: 122 batches of 16 ms in a second.
            w = WindowStats(
                window_s=1.0,
                completed=976,
                batch_stats={8: BatchStat(122, 16.0)},
                device_busy_share=busy,
            )
            s = s.observe(w, 2, float(t), memory_s=60.0)
        return s

    free, busy = learn(None), learn(0.97)
    assert free.saturated_m is None
    m_s = busy.saturated_m
    assert m_s is not None and 1.9 < m_s <= 2.0
    c_free, c_busy = free.curve(4), busy.curve(4)
    assert c_free[2] < 1.4 * c_free[1]  # the prior: a third instance nearly free
    for m in (3, 4):
        assert c_busy[m - 1] >= c_busy[1] * m / 2.0 * 0.98  # time-sharing: L grows with m
    # Spare compute at that busy count later (the co-located load left) clears the bound.
    s = busy
    for t in range(6, 9):
        w = WindowStats(
            window_s=1.0,
            completed=976,
            batch_stats={8: BatchStat(122, 16.0)},
            device_busy_share=0.5,
        )
        s = s.observe(w, 2, float(t), memory_s=60.0)
    assert s.saturated_m is None


def _steady_windows(s: Surface, instances: int, mean_ms: float, busy_ms: float, t0: int) -> Surface:
    """Five one-second windows of batch-1 work: ``busy_ms`` of compute per second."""
    count = round(busy_ms / mean_ms)
    for t in range(t0, t0 + 5):
        w = WindowStats(window_s=1.0, completed=count, batch_stats={1: BatchStat(count, mean_ms)})
        s = s.observe(w, instances, float(t), memory_s=600.0)
    return s


def test_contention_levels_are_solved_for_not_smeared_across_neighbours() -> None:
    # True L(1) = 10 ms, L(2) = 16 ms. One instance measures L(1); two instances half busy
    # (m = 1.5) measure the mean of L(1) and L(2), 13 ms; fully busy (m = 2), 16 ms. Averaged
    # into both neighbouring bins, the m = 1.5 windows would pull L(1) up and L(2) down.
    s = Surface()
    for t0, (n, mean_ms, busy_ms) in enumerate(
        ((1, 10.0, 500.0), (1, 10.0, 500.0), (2, 13.0, 1001.0), (2, 13.0, 1001.0)) * 2
        + ((2, 16.0, 2000.0),) * 4
    ):
        s = _steady_windows(s, n, mean_ms, busy_ms, 1 + 5 * t0)
    curve = s.curve(2)
    assert curve[0] == pytest.approx(10.0, rel=0.03)
    assert curve[1] == pytest.approx(16.0, rel=0.03)


def test_a_measured_busy_count_is_not_optimistic_while_its_evidence_decays() -> None:
    # m = 3 was measured slow (contention 2x). Long after, its evidence has decayed under the
    # "trusted" weight, but the curve still says slow: were it optimistic again, the policy
    # would go back and look once per evidence half-life.
    s = _steady_windows(Surface(), 1, 10.0, 500.0, 1)
    s = _steady_windows(s, 2, 12.0, 2000.0, 6)
    s = _steady_windows(s, 3, 24.0, 3000.0, 11)
    assert s.curve(3)[2] > 20.0
    # Two half-lives of windows at 2 instances only: m = 3's weight decays below 1 window.
    for t in range(16, 1216, 60):
        w = WindowStats(window_s=1.0, completed=166, batch_stats={1: BatchStat(166, 12.0)})
        s = s.observe(w, 2, float(t), memory_s=600.0)
    # The optimistic trend from m = 1, 2 (10 and 12 ms) would say 13.3 ms at m = 3; with
    # little evidence left, the curve leans toward the prior's fit, not below it.
    assert 0.1 < s.bin_w[2] < 1.0
    assert s.curve(3)[2] > 15.0


def test_an_overloaded_start_is_acted_on_in_the_first_window() -> None:
    # The config in force when the policy takes over was not set by it: its first window
    # is a measurement. Waiting one more window only grows the backlog to drain. The
    # backlog found there counts as that window's growth: the offered load is the
    # throughput plus the backlog (100 + 500 rps here), not the throughput alone.
    policy = DnnScalerPolicy()
    o = _window_obs(1.0, Knobs(16, 1, 0), 100.0, 900.0, 500)
    d = policy.decide(o, policy.initial_state(o))
    assert d.knobs != Knobs(16, 1, 0), d.reason
    assert d.reason.startswith("over the SLO") and "at 600 rps" in d.reason


def _bench_replay(
    profile: str, scenario: str, rate_rps: float, slo_at: Callable[[int], Slo], windows: int
) -> RunTrace:
    """``dnnscaler`` on one of the bench's scenarios (1 s windows, seeded as
    ``bench sim --seed 0``), from the server's defaults."""
    from dnnscaler.bench.online import run_online
    from dnnscaler.bench.sim_bench import SimBenchConfig, _seed

    prof = shipped_profiles()[profile]
    return run_online(
        prof,
        DnnScalerPolicy(),
        label=scenario,
        rate_at=lambda i: rate_rps,
        slo_at=slo_at,
        windows=windows,
        window_s=1.0,
        seed=_seed(SimBenchConfig(seed=0), prof, scenario),
        initial_knobs=Knobs(prof.max_batch_size, 1, 0),
    )


def _slo_halved_replay(profile: str, rate_rps: float) -> RunTrace:
    """The bench's ``slo-halved`` scenario (seed 0): the SLO halves at window 30 of 60."""
    slo = Slo(shipped_profiles()[profile].default_slo_ms, 99.0)
    half = Slo(slo.latency_ms / 2, 99.0)
    return _bench_replay(profile, "slo-halved", rate_rps, lambda i: slo if i < 30 else half, 60)


def test_a_queueing_tail_over_the_slo_gets_one_more_instance() -> None:
    # caltech/Mob-V1-025 with the SLO halved: the model finds no config predicted to do
    # better, and the policy used to sit over the SLO at b1 n4 for 9 windows ("over the SLO
    # at the best known config"); b1 n5 holds it. A latency-bound tail over the SLO twice in
    # a row now gets one more instance.
    run = _slo_halved_replay("caltech/Mob-V1-025", 761.3)
    holds = [w.reason.startswith("over the SLO at the best known config") for w in run.windows]
    longest = max((len(list(g)) for k, g in itertools.groupby(holds) if k), default=0)
    assert longest <= 2
    # Since the batch law weighs a window by the batches it could hold (not 1/20 each),
    # that run takes another path (b4 n5, then b2 n4 and b2 n5) and needs no queueing move.
    # synthetic/batch-vs-mt at the same scenario still does: twice over the halved SLO at
    # b1 n3 with nothing better predicted, it adds an instance at the same batch size.
    run = _slo_halved_replay("synthetic/batch-vs-mt", 213.8)
    moves = [
        (w.knobs, run.windows[i + 2].knobs)
        for i, w in enumerate(run.windows[:-2])
        if w.reason.startswith("queueing")
    ]
    assert moves, [w.reason for w in run.windows]
    for before, after in moves:
        assert after.max_batch_size == before.max_batch_size
        assert after.instances == before.instances + 1


def test_a_failed_exploration_retreats_to_the_config_that_served_the_load() -> None:
    # imagenet/Inc-V1 at 0.7 x the oracle (the bench's load-drop start, seed 0): at b16 n2,
    # the oracle's config, serving 770 rps within the SLO, the model predicts more at b32 n3
    # (never run); it breaks the SLO there. The policy used to follow the next prediction
    # (b4 n4, b4 n5, b4 n6, b16 n4, ...: 21 windows over the SLO in 30). It now goes back
    # to b16 n2, which had served that load with margin.
    slo = Slo(shipped_profiles()["imagenet/Inc-V1"].default_slo_ms, 99.0)
    run = _bench_replay("imagenet/Inc-V1", "load-drop", 770.3, lambda i: slo, 30)
    retreats = [w for w in run.windows if w.reason.startswith("retreat")]
    assert retreats, [w.reason for w in run.windows]
    over = sum(1 for w in run.windows if (w.latency_ms or 0.0) > w.slo_ms)
    assert over <= 10, over


def test_a_slower_device_is_seen_as_a_shift_and_scales_what_was_measured() -> None:
    # Ten windows at 10 ms per batch, then the device slows 1.5x (a co-located model): the
    # surface flags the shift with its ratio, and the policy scales its floors and ceilings
    # by its inverse (a floor measured on the faster device would promise gone capacity).
    s = _steady_windows(Surface(), 1, 10.0, 500.0, 1)
    s = _steady_windows(s, 1, 10.0, 500.0, 6)
    assert s.shift_s is None
    w = WindowStats(window_s=1.0, completed=50, batch_stats={1: BatchStat(50, 15.0)})
    s = s.observe(w, 1, 11.0, memory_s=600.0)
    assert s.shift_s == 11.0
    assert s.shift_ratio == pytest.approx(1.5, rel=0.05)
    recs = (ConfigRecord(1, 1, floor_rps=90.0), ConfigRecord(4, 2, ceiling_rps=300.0))
    scaled = rescale_records(recs, 1 / s.shift_ratio)
    assert scaled[0].floor_rps == pytest.approx(60.0, rel=0.05)
    assert scaled[1].ceiling_rps == pytest.approx(200.0, rel=0.05)


def _steady_at_b4n1(policy: DnnScalerPolicy, records: tuple[ConfigRecord, ...]) -> DnnScalerState:
    """Seven steady windows at b4 n1 (200 rps, batches of 4 in 8 ms) learned, with
    ``records``, the config in force since t=0."""
    k = Knobs(4, 1, 0)
    surface = Surface()
    for t in range(1, 8):
        window = _window_obs(float(t), k, 200.0, 20.0, 0).window
        surface = surface.observe(window, 1, float(t), 60.0)
    return replace(
        policy.initial_state(_window_obs(7.0, k, 200.0, 20.0, 0)),
        surface=surface,
        in_force_s=0.0,
        records=records,
    )


def test_the_policy_rescales_its_records_on_a_device_shift() -> None:
    # The policy measured a floor of 200 rps at b4 n1; in the next window the device is
    # 1.5x slower (batches of 4 take 12 ms, not 8): the floor becomes ~133 rps.
    policy = DnnScalerPolicy()
    k = Knobs(4, 1, 0)
    state = _steady_at_b4n1(policy, (ConfigRecord(4, 1, floor_rps=200.0, updated_s=7.0),))
    # (At a lighter load, 100 rps: a window that served 200 rps would set the floor anew.)
    slow = _window_obs(8.0, k, 100.0, 30.0, 0)
    slow = replace(slow, window=replace(slow.window, batch_stats={4: BatchStat(25, 12.0)}))
    state = policy.decide(slow, state).state
    assert state.surface.shift_s == 8.0
    assert state.surface.shift_ratio == pytest.approx(1.5, rel=0.05)
    floor = next(r.floor_rps for r in state.records if (r.max_batch_size, r.instances) == (4, 1))
    assert floor == pytest.approx(200.0 / 1.5, rel=0.05)


def test_a_retreat_goes_to_the_safe_config_the_plan_ranks_highest() -> None:
    # 12-03 in CI (wide_mlp on real Triton, 375 rps): b8 n3, an exploration, broke the SLO.
    # b16 n1, b4 n2 and b16 n2 had each served about that load; their floors (365, 402,
    # 394 rps) only say so. The retreat used to take the highest floor (b4 n2, which
    # saturates near 530 rps) and the run ended at 0.86 x the oracle; it now takes the
    # one the plan ranks highest among them.
    state = DnnScalerState(
        records=(
            ConfigRecord(16, 1, floor_rps=365.0),
            ConfigRecord(4, 2, floor_rps=402.0),
            ConfigRecord(16, 2, floor_rps=394.0),
            ConfigRecord(8, 3, ceiling_rps=375.0),
        )
    )
    caps = {(16, 1): 502.0, (4, 2): 442.0, (16, 2): 1684.0, (8, 3): 364.0}
    got = DnnScalerPolicy._retreat(state, Knobs(8, 3, 0), 375.0, set(), caps)
    assert got is not None and (got.max_batch_size, got.instances) == (16, 2)
    # A config broken at this load is no retreat, whatever the plan says of it.
    got = DnnScalerPolicy._retreat(state, Knobs(8, 3, 0), 375.0, {(16, 2)}, caps)
    assert got is not None and (got.max_batch_size, got.instances) == (16, 1)


def test_a_faster_reading_leaves_what_was_measured() -> None:
    # The same floor of 200 rps at b4 n1 and a ceiling of 300 rps at b8 n2; the next window
    # reads the device 1.6x faster (batches of 4 take 5 ms, not 8). On real Triton such a
    # reading came from a mispredicted batch law, and scaling the records up invented
    # capacity (12-05: a floor of ~1,120 rps became 2,410 and the policy went back to it).
    # A floor stays a lower bound and a ceiling stands.
    policy = DnnScalerPolicy()
    k = Knobs(4, 1, 0)
    records = (
        ConfigRecord(8, 2, ceiling_rps=300.0, updated_s=7.0),
        ConfigRecord(4, 1, floor_rps=200.0, updated_s=7.0),
    )
    state = _steady_at_b4n1(policy, records)
    fast = _window_obs(8.0, k, 100.0, 30.0, 0)
    fast = replace(fast, window=replace(fast.window, batch_stats={4: BatchStat(25, 5.0)}))
    state = policy.decide(fast, state).state
    assert state.surface.shift_s == 8.0
    assert state.surface.shift_ratio == pytest.approx(5.0 / 8.0, rel=0.05)
    got = {(r.max_batch_size, r.instances): r for r in state.records}
    assert got[(4, 1)].floor_rps == 200.0
    assert got[(8, 2)].ceiling_rps == 300.0


def _run21_plan() -> list[PlanEntry]:
    """The last plan of 12-06 CI run 21 (wide_mlp on real Triton, 2-core CPU), top part."""
    return [
        PlanEntry(4, 3, 616.0),
        PlanEntry(8, 3, 610.0),
        PlanEntry(8, 2, 608.0),
        PlanEntry(4, 2, 599.0),
        PlanEntry(16, 2, 595.0),
        PlanEntry(16, 1, 343.0),
    ]


def test_an_exploration_on_cores_the_model_cannot_tell_ends_at_fewer_instances() -> None:
    # Run 21 held b4 n3 (explored from b4 n2; 616 rps predicted) against b8 n2 (608): on
    # the ladder b4 n3 carried 0.68 x b8 n2. On a CPU the contention prior is not the
    # device's: within min_gain, the config with fewer instances (the best of them) wins.
    policy = DnnScalerPolicy()
    records = (ConfigRecord(16, 1, ceiling_rps=358.0), ConfigRecord(4, 2, floor_rps=364.0))
    here = PlanEntry(4, 3, 616.0)
    got = policy._planned_move(_run21_plan(), here, records, exploring=True, cores_device=True)
    assert got == PlanEntry(8, 2, 608.0)
    # Not once the config in force is proven (it was run before it was chosen) ...
    held = policy._planned_move(_run21_plan(), here, records, exploring=False, cores_device=True)
    assert held is None
    # ... nor on a GPU, where the rule cost violations on bench sim.
    gpu = policy._planned_move(_run21_plan(), here, records, exploring=True, cores_device=False)
    assert gpu is None
    # Fewer instances predicted clearly worse: no move.
    worse = [PlanEntry(4, 3, 616.0), PlanEntry(8, 2, 560.0)]
    assert policy._planned_move(worse, here, records, exploring=True, cores_device=True) is None


def test_a_planned_move_needs_its_gain_and_more_for_a_config_never_run() -> None:
    policy = DnnScalerPolicy()
    here = PlanEntry(8, 2, 600.0)
    tried = (ConfigRecord(16, 2, floor_rps=400.0),)
    up = [here, PlanEntry(16, 2, 630.0)]  # +5 %: enough for a config run before
    assert policy._planned_move(up, here, tried, exploring=False, cores_device=True) == up[1]
    untried = [here, PlanEntry(4, 3, 630.0)]  # +5 %, never run: not enough (15 %)
    assert policy._planned_move(untried, here, tried, exploring=False, cores_device=True) is None
    assert policy._planned_move([], here, tried, exploring=True, cores_device=True) is None


def _explored_b4n3(
    here_tail_ms: float, left_tail_ms: float = 24.0
) -> tuple[DnnScalerPolicy, DnnScalerState]:
    """12-06 CI run 32's shape: b8 n2 served ~710 rps at p99 24 ms (SLO 50 here), a planned
    move explored b4 n3 (never run before), which serves the same load at ``here_tail_ms``."""
    policy = DnnScalerPolicy()
    k = Knobs(4, 3, 0)
    surface = Surface()
    for t in range(1, 8):
        surface = surface.observe(
            _window_obs(float(t), k, 710.0, 30.0, 0).window, 3, float(t), 60.0
        )
    left = ConfigRecord(8, 2, floor_rps=712.0, updated_s=0.0, tails=((712.0, left_tail_ms),) * 6)
    here = ConfigRecord(4, 3, floor_rps=708.0, updated_s=7.0, tails=((708.0, here_tail_ms),) * 4)
    state = replace(
        policy.initial_state(_window_obs(7.0, k, 710.0, here_tail_ms, 0)),
        surface=surface,
        target=k,
        in_force_s=0.0,
        records=(left, here),
        exploring=True,
        left=((8, 2, 0.0),),
    )
    return policy, state


def _cpu(o: Observation, busy: float | None = 0.7) -> Observation:
    return replace(o, window=replace(o.window, device_busy_share=busy))


def test_an_exploration_with_a_worse_tail_at_the_same_load_goes_back_on_cores() -> None:
    policy, state = _explored_b4n3(here_tail_ms=38.0)
    # A host busy 0.3: each computing instance takes a fifth of it (b4 n3 stays plannable).
    d = policy.decide(_cpu(_window_obs(8.0, Knobs(4, 3, 0), 710.0, 38.0, 0), 0.3), state)
    assert d.knobs == Knobs(8, 2, 0), d.reason
    assert d.reason.startswith("exploration beaten at the same load"), d.reason
    beaten = {(r.max_batch_size, r.instances): r.beaten_by for r in d.state.records}
    assert beaten[(4, 3)] == (8, 2)
    # The plan now ranks the beaten exploration under the config it lost to, so a later
    # planned move does not take the policy back to it.
    obs = _cpu(_window_obs(9.0, Knobs(8, 2, 0), 710.0, 24.0, 0), 0.3)
    plan = {
        (p.max_batch_size, p.instances): p.capacity_rps
        for p in policy._replan(replace(d.state, plan_key=""), obs, 4, urgent=True).plan
    }
    assert plan[(4, 3)] <= 0.97 * plan[(8, 2)] + 1e-9


def test_no_same_load_return_on_a_gpu_or_for_a_comparable_tail() -> None:
    policy, state = _explored_b4n3(here_tail_ms=38.0)
    gpu = policy.decide(_cpu(_window_obs(8.0, Knobs(4, 3, 0), 710.0, 38.0, 0), None), state)
    assert not gpu.reason.startswith("exploration beaten"), gpu.reason
    policy, state = _explored_b4n3(here_tail_ms=28.0)  # 1.17 x: within the noise allowed
    close = policy.decide(_cpu(_window_obs(8.0, Knobs(4, 3, 0), 710.0, 28.0, 0)), state)
    assert not close.reason.startswith("exploration beaten"), close.reason
    # Measured at another load, the tails are not compared.
    policy, state = _explored_b4n3(here_tail_ms=38.0)
    far = policy.decide(_cpu(_window_obs(8.0, Knobs(4, 3, 0), 900.0, 38.0, 0)), state)
    assert not far.reason.startswith("exploration beaten"), far.reason


def test_no_same_load_return_for_tails_far_under_the_slo() -> None:
    """Fresh clone 71: resnet_small's b8 n2 read p99 26.3 ms against b16 n1's 18.7 ms at
    515 rps, 0.12 of a 213.7 ms SLO, went back to b16 n1 and ended at 0.68 of the oracle.
    The same 1.4 x far under the SLO (9 against 6.4 ms of 50) is not a verdict; at 0.3 of
    the SLO it is."""
    policy, state = _explored_b4n3(here_tail_ms=9.0, left_tail_ms=6.4)
    light = policy.decide(_cpu(_window_obs(8.0, Knobs(4, 3, 0), 710.0, 9.0, 0)), state)
    assert not light.reason.startswith("exploration beaten"), light.reason
    policy, state = _explored_b4n3(here_tail_ms=15.0, left_tail_ms=10.7)
    near = policy.decide(_cpu(_window_obs(8.0, Knobs(4, 3, 0), 710.0, 15.0, 0)), state)
    assert near.reason.startswith("exploration beaten at the same load"), near.reason


def _b8n2_in_force(tail_ms: float, windows: int = 6) -> tuple[DnnScalerPolicy, DnnScalerState]:
    """The landing CI of bd0142a: b8 n2 in force, serving ~713 rps at p99 ``tail_ms`` under
    a 50 ms SLO; its plan capacity is its floor (the model under-predicts it)."""
    policy = DnnScalerPolicy()
    k = Knobs(8, 2, 0)
    rec = ConfigRecord(8, 2, floor_rps=779.0, updated_s=25.0, tails=((713.0, tail_ms),) * windows)
    state = replace(
        policy.initial_state(_window_obs(25.0, k, 713.0, tail_ms, 0)),
        target=k,
        records=(ConfigRecord(16, 1, floor_rps=751.0), rec),
    )
    return policy, state


def test_a_forecast_must_beat_the_headroom_of_a_config_passing_with_room_on_cores() -> None:
    # b8 n2 served 713 rps at p99 14.6 ms of a 50 ms SLO; the plan put it at its floor (779)
    # and b4 n2, never run, at a forecast of 1,044: the policy moved, and b4 n2 carried 0.64 x
    # what b8 n2 did. Credited for its tail's room, b8 n2 holds.
    policy, state = _b8n2_in_force(14.6)
    credit = policy._headroom(state, Knobs(8, 2, 0), 713.0, 50.0)
    assert credit == pytest.approx(713.0 * (0.95 * 50.0 / 14.6) ** (1 / 3))
    here = PlanEntry(8, 2, 779.0)
    plan = [PlanEntry(4, 2, 1044.0), here]
    args = (plan, here, state.records)
    assert policy._planned_move(*args, exploring=False, cores_device=True, headroom=credit) is None
    # Without the credit (a GPU: bench sim was tuned without it), the forecast wins.
    assert policy._planned_move(*args, exploring=False, cores_device=False) == plan[0]
    # A forecast 15 % past the credit still moves, and a config run before is compared with
    # the plan's capacity, not the credit (a measurement against a measurement).
    far = [PlanEntry(4, 2, 1.16 * credit), here]
    got = policy._planned_move(far, here, state.records, False, True, headroom=credit)
    assert got == far[0]
    tried = [PlanEntry(16, 1, 820.0), here]
    got = policy._planned_move(tried, here, state.records, False, True, headroom=credit)
    assert got == tried[0]


def test_the_headroom_credit_needs_steady_windows_at_this_load_and_is_bounded() -> None:
    policy, state = _b8n2_in_force(14.6, windows=2)  # under SAME_LOAD_WINDOWS
    assert policy._headroom(state, Knobs(8, 2, 0), 713.0, 50.0) == 0.0
    policy, state = _b8n2_in_force(14.6)
    assert policy._headroom(state, Knobs(8, 2, 0), 900.0, 50.0) == 0.0  # another load
    assert policy._headroom(state, Knobs(4, 2, 0), 713.0, 50.0) == 0.0  # never run
    rec = ConfigRecord(8, 2, floor_rps=700.0)
    assert headroom_rps(rec, 700.0, 47.5, 1.0, 3.0, 1.5) == pytest.approx(1050.0)  # at most 1.5x
    assert headroom_rps(rec, 700.0, 47.5, 50.0, 3.0, 1.5) == 0.0  # no room: no credit
    capped = replace(rec, ceiling_rps=800.0)
    assert headroom_rps(capped, 700.0, 47.5, 10.0, 3.0, 1.5) == pytest.approx(0.97 * 800.0)


def test_a_held_config_says_what_its_headroom_is_credited() -> None:
    # Through decide: the landing CI's last plan (kept: re-planned under 5 s ago), a
    # surface with evidence, b8 n2 in force long enough to move.
    policy, state = _b8n2_in_force(14.6)
    k = Knobs(8, 2, 0)
    surface = Surface()
    for t in range(1, 8):
        surface = surface.observe(
            _window_obs(float(t), k, 713.0, 14.6, 0).window, 2, float(t), 60.0
        )
    state = replace(
        state,
        surface=surface,
        in_force_s=0.0,
        changed_s=0.0,
        plan=(PlanEntry(4, 2, 1044.0), PlanEntry(8, 2, 779.0)),
        plan_key="50/99/4/16;the landing CI's",
        plan_s=26.0,
    )
    obs = _window_obs(26.0, k, 713.0, 14.6, 0)
    d = policy.decide(_cpu(obs), state)
    assert d.knobs == k, d.reason
    assert d.reason.startswith("holding, predicted capacity 779 rps, 1057 by its tail's headroom")
    gpu = policy.decide(_cpu(obs, None), state)
    assert gpu.knobs == Knobs(4, 2, 0), gpu.reason


def test_no_same_load_return_from_an_exploration_that_raised_the_batch() -> None:
    """CI run 46: b4 n2 -> b8 n3 read a worse tail at half capacity (the bigger batch's
    longer service, not contention) and went back to b4 n2, 0.71 of the oracle."""
    policy, state = _explored_b4n3(here_tail_ms=38.0)
    k = Knobs(8, 3, 0)
    left = ConfigRecord(4, 2, floor_rps=712.0, updated_s=0.0, tails=((712.0, 24.0),) * 6)
    here = ConfigRecord(8, 3, floor_rps=708.0, updated_s=7.0, tails=((708.0, 38.0),) * 4)
    state = replace(state, target=k, records=(left, here), left=((4, 2, 0.0),))
    d = policy.decide(_cpu(_window_obs(8.0, k, 710.0, 38.0, 0)), state)
    assert not d.reason.startswith("exploration beaten"), d.reason


def _cores_surface(compute_ms: float, busy: float | None, windows: int = 5) -> Surface:
    """``windows`` one-second windows of batches of 4 whose instances computed
    ``compute_ms`` in all, the host ``busy`` (None: a GPU, no busy share)."""
    s = Surface()
    count = round(compute_ms / 8.0)
    for t in range(1, windows + 1):
        w = WindowStats(
            window_s=1.0,
            completed=4 * count,
            batch_stats={4: BatchStat(count, 8.0)},
            device_busy_share=busy,
        )
        s = s.observe(w, 3, float(t), memory_s=60.0)
    return s


def test_useful_instances_is_the_device_over_the_share_each_computing_instance_takes() -> None:
    # wide_mlp on the 2-core box (12-07 traces): 1,450 ms of compute a second with the host
    # 0.78 busy, each instance computing takes >= half of it: two. serial_io (sleeps):
    # 2,100 ms of "compute" a second at 0.25 busy: nine.
    assert _cores_surface(1450.0, 0.78).useful_instances == 2
    assert _cores_surface(2100.0, 0.25).useful_instances == 9
    assert _cores_surface(1000.0, 0.5).useful_instances == 2  # exactly 1/2: no third
    assert _cores_surface(1000.0, 0.9).useful_instances == 2  # ceil(1.11): a second may help
    assert _cores_surface(1450.0, None).useful_instances is None  # a GPU: not measured
    assert _cores_surface(400.0, 0.3, windows=1).useful_instances is None  # too little yet


def _b4n2_passing(busy: float | None) -> tuple[DnnScalerPolicy, Observation, DnnScalerState]:
    """The stop-32 landing CI's shape: b4 n2 serving 350 rps with room under a 50 ms SLO
    (1,450 ms of compute a second), long enough in force to plan a move."""
    policy = DnnScalerPolicy()
    k = Knobs(4, 2, 0)
    w = WindowStats(
        window_s=1.0,
        completed=350,
        throughput_rps=350.0,
        latency_p99_ms=22.0,
        pending_requests=0,
        batch_stats={2: BatchStat(175, 8.3)},
        device_busy_share=busy,
    )
    limits = KnobLimits(max_batch_size=16, max_instances=4)
    state = None
    for t in range(1, 16):
        o = Observation(float(t), "m", Slo(50.0, 99.0), k, limits, w)
        state = policy.initial_state(o) if state is None else state
        state = policy.decide(o, state).state
    assert state is not None
    return policy, Observation(16.0, "m", Slo(50.0, 99.0), k, limits, w), state


def test_no_planned_instance_past_what_a_cores_device_runs_on_compute_of_its_own() -> None:
    # The plan forecasts a third instance far ahead (the contention prior); with the host's
    # busy share each computing instance takes over half of it, so the planned move goes to
    # the best config with two. Without a busy share (a GPU) the forecast wins.
    plan = (PlanEntry(2, 3, 1000.0), PlanEntry(8, 2, 760.0), PlanEntry(4, 2, 645.0))
    moves = {}
    for busy in (0.8, None):
        policy, o, state = _b4n2_passing(busy)
        # The plan as given (re-planned under 5 s ago under this SLO).
        state = replace(state, plan=plan, plan_key="50/99/4/16;given", plan_s=o.now_s)
        moves[busy] = policy.decide(o, state)
    assert moves[0.8].knobs == Knobs(8, 2, 0), moves[0.8].reason
    assert moves[None].knobs == Knobs(2, 3, 0), moves[None].reason


def test_the_useful_count_never_falls_under_the_count_in_force() -> None:
    # A bound on adding instances, not a reason to move: a config in force with three
    # stays a candidate (and a GPU has no bound at all).
    surface = _cores_surface(1450.0, 0.78)
    assert _useful(surface, Knobs(4, 2, 0), 4) == 2
    assert _useful(surface, Knobs(4, 3, 0), 4) == 3
    assert _useful(surface, Knobs(4, 1, 0), 1) == 1  # never past what fits
    assert _useful(_cores_surface(1450.0, None), Knobs(4, 2, 0), 4) == 4


DATA = Path(__file__).parent / "data"


def test_a_batch_is_explored_one_grid_step_past_those_run_at_its_count() -> None:
    records = (ConfigRecord(16, 1), ConfigRecord(8, 2))
    assert _batch_reach(records, 1) == 32
    assert _batch_reach(records, 2) == 16
    assert _batch_reach(records, 3) == 16  # the nearest count run below
    assert _batch_reach((ConfigRecord(8, 2),), 1) == 16  # none below: the nearest above
    assert _batch_reach((), 2) == math.inf  # nothing run yet: no bound


def test_a_real_run_on_cores_explores_the_next_batch_not_the_forecast_jump() -> None:
    # resnet_small on the 2-core box held b8 n2 at ~1,000 rps with the host 0.93-1.00 busy,
    # then moved to b32 n2 forecast at 3,899 rps (a batch law read across instance counts);
    # now the next batch at n = 2, b16, whose own windows then correct the law.
    trace = dt.loads((DATA / "jump_resnet_small.jsonl").read_text())
    decisions = dt.replay(trace)
    moved = [i for i, s in enumerate(trace.steps) if s.knobs != s.obs.knobs]
    assert moved == [1, 9]
    for i in range(9):
        assert decisions[i].knobs == trace.steps[i].knobs, i
    assert trace.steps[9].knobs == Knobs(32, 2, 0)
    assert decisions[9].knobs == Knobs(16, 2, 0)


def _overloaded_b16n1(busy: float) -> Observation:
    """resnet_small's first recorded window at b16 n1, made an overload: 544 rps offered,
    420 completed, a backlog of 124 and p99 325 ms over a 231.4 ms SLO."""
    first = dt.loads((DATA / "trace_resnet_small.jsonl").read_text()).steps[0].obs
    window = replace(
        first.window,
        window_s=1.0,
        completed=420,
        throughput_rps=420.0,
        latency_p99_ms=325.0,
        latency_p95_ms=300.0,
        latency_p50_ms=200.0,
        latency_mean_ms=160.0,
        pending_requests=124,
        batch_stats={16: BatchStat(26, 46.4)},
        compute_mean_ms=46.4,
        queue_mean_ms=130.0,
        device_busy_share=busy,
    )
    return replace(first, now_s=first.now_s + 1.0, slo=Slo(231.4, 99.0), window=window)


def test_the_overload_fallback_never_moves_to_less_than_the_config_in_force_completes() -> None:
    # With the host read saturated at one instance, the model's raw capacity for b16 n1 is
    # 345 rps and b64 n1's 365: the fallback went to b64 n1, under the 420 b16 n1 completed.
    policy = DnnScalerPolicy()
    o = _overloaded_b16n1(busy=1.0)
    d = policy.decide(o, policy.initial_state(o))
    assert d.knobs == o.knobs, d.reason
    assert d.reason.startswith("overloaded at the best known config"), d.reason
    # With room on the host, the fallback still moves, to a second instance.
    o = _overloaded_b16n1(busy=0.75)
    d = policy.decide(o, policy.initial_state(o))
    assert d.knobs == Knobs(8, 2, 0), d.reason


def test_a_violation_move_on_cores_takes_half_the_batch_for_a_forecast_within_a_tenth() -> None:
    plan = [PlanEntry(16, 2, 1567.0), PlanEntry(8, 2, 1471.0), PlanEntry(4, 2, 1309.0)]
    assert _half_batch(plan, plan[0], 0.1) == plan[1]  # 6 % under: the smaller batch
    assert _half_batch(plan, plan[1], 0.1) == plan[1]  # b4 is 11 % under b8: b8 stays
    assert _half_batch(plan[:1], plan[0], 0.1) == plan[0]  # no half in the plan
