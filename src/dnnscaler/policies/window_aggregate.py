"""Aggregation of per-report windows into a longer control interval, by elapsed time.

The published scalers (and Clipper's AIMD) act every 3 s while agents report every ~1 s.
Each observation covers ``[now_s - window.window_s, now_s]``; an ``Aggregate`` sums reports
until the covered span reaches the interval. It restarts whenever the knobs in force change,
so a decision is never made on latencies measured under older knobs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dnnscaler.core.types import Knobs, Observation

# Tolerance on the covered span: reports are ~1 s apart, not exactly.
_SPAN_SLACK_S = 0.05


@dataclass(frozen=True)
class Aggregate:
    """Completion-weighted sums over the reports of one control interval."""

    start_s: float | None = None
    knobs: Knobs | None = None
    completed: int = 0
    mean_weighted_ms: float = 0.0
    p95_weighted_ms: float = 0.0
    p95_max_ms: float = 0.0
    batches: int = 0
    batch_compute_sum_ms: float = 0.0

    @property
    def mean_ms(self) -> float | None:
        """Completion-weighted mean latency over the interval."""
        return self.mean_weighted_ms / self.completed if self.completed else None

    @property
    def batch_latency_ms(self) -> float | None:
        """Mean compute time of the executed batches (the paper's "batch latency")."""
        if self.batches:
            return self.batch_compute_sum_ms / self.batches
        return self.mean_ms

    @property
    def p95_ms(self) -> float | None:
        """Completion-weighted mean of the per-report p95s (an approximation of the p95)."""
        return self.p95_weighted_ms / self.completed if self.completed else None

    def span_s(self, now_s: float) -> float:
        return 0.0 if self.start_s is None else now_s - self.start_s

    def add(self, obs: Observation) -> Aggregate:
        """This aggregate with ``obs`` folded in (restarted if the knobs changed)."""
        base = self
        if base.start_s is None or base.knobs != obs.knobs:
            base = Aggregate(start_s=obs.now_s - obs.window.window_s, knobs=obs.knobs)
        w = obs.window
        n = w.completed
        if n <= 0 or w.latency_mean_ms is None:
            return base
        batches = sum(s.count for s in w.batch_stats.values())
        batch_sum = sum(s.count * s.compute_ms_mean for s in w.batch_stats.values())
        if not batches and w.compute_mean_ms is not None:
            batches, batch_sum = n, n * w.compute_mean_ms
        p95 = w.latency_p95_ms if w.latency_p95_ms is not None else w.latency_p99_ms
        p95 = p95 if p95 is not None else w.latency_mean_ms
        return replace(
            base,
            completed=base.completed + n,
            mean_weighted_ms=base.mean_weighted_ms + n * w.latency_mean_ms,
            p95_weighted_ms=base.p95_weighted_ms + n * p95,
            p95_max_ms=max(base.p95_max_ms, p95),
            batches=base.batches + batches,
            batch_compute_sum_ms=base.batch_compute_sum_ms + batch_sum,
        )

    def complete(self, now_s: float, interval_s: float) -> bool:
        """True when the aggregate covers at least ``interval_s`` of elapsed time."""
        return self.span_s(now_s) >= interval_s - _SPAN_SLACK_S

    def restarted(self, now_s: float) -> Aggregate:
        """An empty aggregate starting now, under the same knobs."""
        return Aggregate(start_s=now_s, knobs=self.knobs)
