"""Differencing Triton's cumulative statistics, including the reset on a full reload."""

from __future__ import annotations

from typing import Any

from dnnscaler.triton.statistics import Cumulative, WindowCounter


def _stats(success: int, ns_per: int = 2_000_000, fail: int = 0, b1: int = 0, b4: int = 0) -> Any:
    def d(count: int, ns: int) -> dict[str, str]:
        return {"count": str(count), "ns": str(ns)} if count else {}

    execs = b1 + b4
    return [
        {
            "name": "m",
            "version": "1",
            "inference_count": str(success),
            "execution_count": str(execs),
            "inference_stats": {
                "success": d(success, success * ns_per),
                "fail": d(fail, fail * 1000),
                "queue": d(success, success * 500_000),
                "compute_input": d(execs, execs * 100_000),
                "compute_infer": d(execs, execs * 1_000_000),
                "compute_output": d(execs, execs * 100_000),
            },
            "batch_stats": [
                {
                    "batch_size": "1",
                    "compute_infer": d(b1, b1 * 1_000_000),
                    "compute_input": d(b1, 0),
                    "compute_output": d(b1, 0),
                },
                {"batch_size": "4", "compute_infer": d(b4, b4 * 3_000_000)},
            ],
        }
    ]


def test_window_is_the_difference() -> None:
    a = Cumulative.parse(_stats(10, b1=10))
    b = Cumulative.parse(_stats(30, fail=2, b1=14, b4=4))
    w = b.minus(a)
    assert w.success.count == 20
    assert w.fail.count == 2
    assert w.mean_ms(w.success) == 2.0
    assert w.mean_ms(w.queue) == 0.5
    stats = w.batch_stats()
    assert set(stats) == {1, 4}
    assert stats[1].count == 4
    assert stats[4].count == 4
    assert stats[4].compute_ms_mean == 3.0


def test_reset_after_full_reload_uses_the_new_counters_alone() -> None:
    before = Cumulative.parse(_stats(1000, b1=1000))
    after = Cumulative.parse(_stats(25, b1=5, b4=5))
    assert after.went_back_from(before)
    w = after.minus(before)
    assert w.success.count == 25
    assert w.batch_stats()[4].count == 5


def test_empty_and_first_window() -> None:
    empty = Cumulative.parse([])
    assert empty.success.count == 0
    assert empty.mean_ms(empty.success) is None
    first = Cumulative.parse(_stats(5, b1=5))
    assert first.minus(None).success.count == 5


def test_versions_are_summed() -> None:
    two = Cumulative.parse(_stats(3, b1=3) + _stats(4, b1=4))
    assert two.success.count == 7
    assert two.batches[1].count == 7


def test_plus_joins_the_old_instances_last_window_and_the_new_ones_first() -> None:
    old = Cumulative.parse(_stats(20, b1=12, b4=2))
    new = Cumulative.parse(_stats(5, b1=1, b4=1))
    both = new.plus(old)
    assert both.success.count == 25
    assert both.execution_count == 16
    assert both.batch_stats()[1].count == 13
    assert both.batch_stats()[4].count == 3
    assert both.mean_ms(both.success) == 2.0


def _c(success: int) -> Cumulative:
    return Cumulative.parse(_stats(success, b1=success))


def test_counter_first_reading_is_a_baseline_then_windows_are_differences() -> None:
    c = WindowCounter()
    assert c.take(_c(1000)) == (None, 0)  # a long-running server's past is not a window
    w, resets = c.take(_c(1200))
    assert w is not None and w.success.count == 200 and resets == 0


def test_counter_keeps_the_old_instances_share_when_a_reading_saw_them_before_the_reset() -> None:
    c = WindowCounter()
    c.take(_c(500))
    c.saw(_c(560))  # the reload's watch, old instances still serving
    c.saw(_c(600))
    c.saw(_c(10))  # the swap: new counters
    w, resets = c.take(_c(90))
    assert w is not None and resets == 1
    assert w.success.count == 100 + 90  # 500 -> 600 by the old, 0 -> 90 by the new
    assert w.batch_stats()[1].count == 190


def test_counter_without_a_watch_counts_the_new_counters_alone() -> None:
    c = WindowCounter()
    c.take(_c(500))
    w, resets = c.take(_c(40))  # someone else's reload between two observations
    assert w is not None and w.success.count == 40 and resets == 1


def test_counter_two_resets_in_one_window_lose_neither_generation() -> None:
    """Fresh clone 67's shape: reload k ended (reset) after the last observation; reload k+1
    began before the next one, its watch's first reading already below that observation's.
    The old code took that first drop for reload k+1's own reset, stopped watching, and the
    window counted only the last generation: 0 where the client saw 187."""
    c = WindowCounter()
    c.take(_c(762))  # observation: generation k-1
    c.saw(_c(800))  # reload k's watch
    c.saw(_c(5))  # reload k's swap
    c.saw(_c(213))  # reload k+1's watch, first reading: generation k
    c.saw(_c(390))
    c.saw(_c(3))  # reload k+1's swap
    w, resets = c.take(_c(60))
    assert w is not None and resets == 2
    assert w.success.count == (800 - 762) + 390 + 60


def test_counter_resets_across_windows_start_each_window_afresh() -> None:
    c = WindowCounter()
    c.take(_c(100))
    c.saw(_c(150))
    c.saw(_c(2))
    w1, r1 = c.take(_c(30))
    w2, r2 = c.take(_c(80))
    assert w1 is not None and w1.success.count == 50 + 30 and r1 == 1
    assert w2 is not None and w2.success.count == 50 and r2 == 0
