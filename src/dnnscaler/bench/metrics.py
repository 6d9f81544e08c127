"""Figures of merit from online runs (definitions in /work/shared/brief/benchmark.md).

* Staircase: step ``j`` offers ``(start + j * step) x oracle capacity``; it passes when the
  p-th percentile of all latencies in its second half is within the SLO. Online capacity = rate
  of the highest step passed before two consecutive failures.
* Violation rate: share of windows whose p-th percentile latency exceeds the SLO.
* Violations within capacity (#19): the share of windows over the SLO among those of steps
  offered at <= 0.9 x the oracle's capacity, leaving out the first 10 windows after each knob
  change (a step past every config's capacity, and a reload's own tail, are not a policy's
  fault to judge).
* Knob changes after settling, per load level (#19's stability): in each step, the changes
  after the step settled (all of its changes if it never did).
* Settle time after a change: windows until latency is within the SLO and throughput
  (3-window mean) within 5 % of the segment's final throughput (or two Poisson standard
  deviations of the 3-window request count, if larger: slow models complete few requests per
  window) for ``SETTLED_RUN`` consecutive windows; an isolated violation later on counts in
  the violation rate, not in the settle time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dnnscaler.bench.online import WindowRecord


@dataclass(frozen=True)
class Staircase:
    start_frac: float = 0.30
    step_frac: float = 0.05
    max_frac: float = 1.5
    step_windows: int = 10
    min_half_requests: int = 1000  # stretch steps so each half-step sees this many requests

    def for_rate(self, capacity_rps: float, window_s: float) -> Staircase:
        """This staircase with steps long enough that the second half of a step at the
        first step's rate holds ``min_half_requests`` requests (at most 100 windows)."""
        if self.min_half_requests <= 0 or capacity_rps <= 0:
            return self
        per_window = self.start_frac * capacity_rps * window_s
        half = math.ceil(self.min_half_requests / per_window)
        return replace(self, step_windows=min(100, max(self.step_windows, 2 * half)))

    @property
    def max_steps(self) -> int:
        return round((self.max_frac - self.start_frac) / self.step_frac) + 1

    def rate(self, capacity_rps: float, window: int) -> float:
        j = window // self.step_windows
        return (self.start_frac + self.step_frac * j) * capacity_rps


@dataclass(frozen=True)
class StepResult:
    rate_rps: float
    latency_ms: float | None
    passed: bool


def step_results(
    st: Staircase,
    windows: Sequence[WindowRecord],
    latencies: Sequence[np.ndarray],
    percentile: float,
) -> list[StepResult]:
    """Pass/fail of every complete step of a staircase run."""
    out = []
    half = st.step_windows // 2
    for j in range(len(windows) // st.step_windows):
        lo = j * st.step_windows
        hi = lo + st.step_windows
        lat = np.concatenate([latencies[i] for i in range(lo + half, hi)] or [np.empty(0)])
        slo = windows[hi - 1].slo_ms
        if lat.size == 0:
            ok = windows[hi - 1].rate_rps <= 0
            out.append(StepResult(windows[lo].rate_rps, None, ok))
            continue
        with np.errstate(invalid="ignore"):  # shed arrivals are inf; inf - inf is nan
            p = float(np.percentile(lat, percentile))
        p = math.inf if math.isnan(p) else p
        out.append(StepResult(windows[lo].rate_rps, p, p <= slo))
    return out


def online_capacity(steps: Sequence[StepResult]) -> tuple[float, int]:
    """(capacity, index of the highest passed step or -1) before two failures in a row."""
    best, best_j, fails = 0.0, -1, 0
    for j, s in enumerate(steps):
        if s.passed:
            fails = 0
            if s.rate_rps >= best:
                best, best_j = s.rate_rps, j
        else:
            fails += 1
            if fails >= 2:
                break
    return best, best_j


def should_stop(st: Staircase, windows: Sequence[WindowRecord], steps: list[StepResult]) -> bool:
    return len(steps) >= 2 and not steps[-1].passed and not steps[-2].passed


def violated(w: WindowRecord) -> bool:
    return w.latency_ms is not None and w.latency_ms > w.slo_ms


def violation_rate(windows: Sequence[WindowRecord]) -> float:
    if not windows:
        return 0.0
    return sum(1 for w in windows if violated(w)) / len(windows)


SETTLED_RUN = 3


def settle_windows(seg: Sequence[WindowRecord]) -> int | None:
    """Windows after the segment start until it is settled; None if never."""
    n = len(seg)
    if n < SETTLED_RUN:
        return None
    counts = [w.completed for w in seg]
    dur = [w.t_s - (seg[i - 1].t_s if i else seg[0].t_s - _len(seg)) for i, w in enumerate(seg)]
    thr3 = []
    for i in range(n):
        lo = max(0, i - 2)
        c = sum(counts[lo : i + 1])
        thr3.append((c / sum(dur[lo : i + 1]), c))
    tail = [t for t, _ in thr3[-max(3, n // 3) :]]
    final = float(np.median(tail))
    run = 0
    for i in range(n):
        thr, c = thr3[i]
        tol = max(0.05, 2.0 / math.sqrt(c)) if c > 0 else 0.05
        ok = not violated(seg[i]) and (final == 0 or abs(thr - final) <= tol * final)
        run = run + 1 if ok else 0
        if run == SETTLED_RUN:
            return i + 1 - SETTLED_RUN
    return None


def _len(seg: Sequence[WindowRecord]) -> float:
    return seg[1].t_s - seg[0].t_s if len(seg) > 1 else 1.0


AFTER_CHANGE = 10  # windows after a knob change left out of the within-capacity violations
WITHIN_FRAC = 0.9  # steps offered at or under this share of the oracle's capacity count


@dataclass(frozen=True)
class StepStats:
    """One staircase step's share of the #19 figures; a record keeps one per step, so that
    they can be judged against the oracle's run once it is known."""

    rate_rps: float
    judged: int  # windows counted for violations: not within AFTER_CHANGE of a knob change
    violated: int  # of those, windows over the SLO
    changes: int  # knob changes in the step
    changes_after_settle: int  # changes once the step had settled (all, if it never did)


def step_stats(st: Staircase, windows: Sequence[WindowRecord]) -> tuple[StepStats, ...]:
    """Per complete step of a staircase run (``windows`` without any warm-up)."""
    out = []
    since = AFTER_CHANGE  # the run's first knobs are not a change
    for j in range(len(windows) // st.step_windows):
        seg = windows[j * st.step_windows : (j + 1) * st.step_windows]
        judged = violated_n = 0
        for w in seg:
            since = 0 if w.changed else since + 1
            if since >= AFTER_CHANGE:
                judged += 1
                violated_n += violated(w)
        settle = settle_windows(seg)
        changed_at = [i for i, w in enumerate(seg) if w.changed]
        after = len(changed_at) if settle is None else sum(i > settle for i in changed_at)
        out.append(StepStats(seg[0].rate_rps, judged, violated_n, len(changed_at), after))
    return tuple(out)


def within_capacity(steps: Sequence[StepStats], capacity_rps: float) -> list[StepStats]:
    """The steps offered at or under ``WITHIN_FRAC`` x ``capacity_rps``."""
    bound = WITHIN_FRAC * capacity_rps * (1 + 1e-9)
    return [s for s in steps if s.rate_rps <= bound]


def violation_rate_within(steps: Sequence[StepStats], capacity_rps: float) -> float | None:
    """Violations within capacity (see the module's docstring); None if no window counts."""
    inside = within_capacity(steps, capacity_rps)
    judged = sum(s.judged for s in inside)
    return sum(s.violated for s in inside) / judged if judged else None


def changes_after_settle_max(steps: Sequence[StepStats], capacity_rps: float) -> int | None:
    """The most knob changes after settling in one step within capacity; None if none."""
    inside = within_capacity(steps, capacity_rps)
    return max((s.changes_after_settle for s in inside), default=None)
