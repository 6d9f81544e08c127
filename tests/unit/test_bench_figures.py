"""#19's benchmark figures: violations within capacity, changes after settling, and their
judgement against the oracle's run (``metrics.step_stats``, ``records.with_ratios``)."""

from __future__ import annotations

from dataclasses import replace

from dnnscaler.bench import metrics as m
from dnnscaler.bench.online import WindowRecord
from dnnscaler.bench.records import BenchRecord, with_ratios
from dnnscaler.core.types import Knobs

ST = m.Staircase(start_frac=0.5, step_frac=0.25, step_windows=20, min_half_requests=0)


def _w(t: int, rate: float, lat: float, knobs: Knobs, changed: bool = False) -> WindowRecord:
    return WindowRecord(
        t_s=float(t),
        rate_rps=rate,
        slo_ms=50.0,
        completed=int(rate),
        failed=0,
        throughput_rps=rate,
        latency_ms=lat,
        knobs=knobs,
        approach="hybrid",
        changed=changed,
    )


def _run(steps: list[tuple[float, list[float], set[int]]]) -> list[WindowRecord]:
    """Windows of consecutive steps: (rate, latency per window, indexes that change knobs)."""
    out: list[WindowRecord] = []
    k = Knobs(8, 1, 0)
    for rate, lats, changes in steps:
        for i, lat in enumerate(lats):
            if i in changes:
                k = replace(k, instances=k.instances + 1)
            out.append(_w(len(out), rate, lat, k, changed=i in changes))
    return out


def test_windows_after_a_change_are_not_judged() -> None:
    lats = [80.0] * 3 + [10.0] * 17  # over the SLO only in the change's first 3 windows
    stats = m.step_stats(ST, _run([(100.0, lats, {0})]))
    assert stats == (m.StepStats(100.0, 10, 0, 1, 0),)
    # Without the change the same windows are judged, and 3 of 20 are over the SLO.
    plain = m.step_stats(ST, _run([(100.0, lats, set())]))
    assert (plain[0].judged, plain[0].violated) == (20, 3)


def test_only_steps_within_capacity_count() -> None:
    ok, bad = [10.0] * 20, [80.0] * 20
    stats = m.step_stats(ST, _run([(100.0, ok, set()), (150.0, ok, set()), (200.0, bad, set())]))
    # Capacity 200: steps at <= 180 rps count, the 200 rps step past it does not.
    assert m.violation_rate_within(stats, 200.0) == 0.0
    assert m.violation_rate_within(stats, 240.0) == 20 / 60
    assert m.violation_rate_within(stats, 50.0) is None


def test_changes_after_settling_per_step() -> None:
    # A step that settles after its first change, then hunts twice more.
    hunting = m.step_stats(ST, _run([(100.0, [10.0] * 20, {0, 8, 14})]))
    assert hunting[0].changes == 3
    assert hunting[0].changes_after_settle == 2
    quiet = m.step_stats(ST, _run([(100.0, [10.0] * 20, {0})]))
    assert quiet[0].changes_after_settle == 0
    assert m.changes_after_settle_max(hunting + quiet, 200.0) == 2


def _rec(policy: str, cap: float, steps: tuple[m.StepStats, ...], inter: float) -> BenchRecord:
    return BenchRecord(
        model="x",
        policy=policy,
        approach="hybrid",
        final_knobs=Knobs(8, 1, 0),
        online_capacity_rps=cap,
        oracle_capacity_rps=300.0,
        oracle_knobs=Knobs(8, 1, 0),
        ratio_to_oracle=cap / 300.0,
        violation_rate=0.0,
        settle_windows=0,
        failed_requests=0,
        knob_changes=0,
        slo_ms=50.0,
        percentile=99.0,
        window_s=1.0,
        steps=steps,
        interference_violation_rate=inter,
    )


def test_figures_are_judged_against_the_oracle_run() -> None:
    steps = (m.StepStats(100.0, 10, 1, 0, 0), m.StepStats(250.0, 10, 5, 2, 2))
    recs = with_ratios([_rec("dnnscaler", 240.0, steps, 0.2), _rec("oracle", 200.0, (), 0.1)])
    ours = recs[0]
    # The oracle's run carried 200 rps: only the 100 rps step is within 0.9 x of it (the
    # sweep's 300 would have let the 250 rps step in).
    assert ours.violation_rate_within == 0.1
    assert ours.changes_after_settle_max == 0
    assert ours.oracle_interference_violation_rate == 0.1
    # With no oracle run, the sweep's capacity is the reference.
    alone = with_ratios([_rec("dnnscaler", 240.0, steps, 0.2)])[0]
    assert alone.violation_rate_within == 6 / 20
    assert alone.changes_after_settle_max == 2
