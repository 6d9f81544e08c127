"""Benchmark results: one record per model x policy, shared by the sim and real-server benches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dnnscaler.bench.metrics import StepStats, changes_after_settle_max, violation_rate_within
from dnnscaler.core.types import Knobs


@dataclass(frozen=True)
class ScenarioResult:
    """A dynamic scenario: settle windows after each change and the violation rate."""

    name: str
    rate_rps: float
    settle_windows: tuple[int | None, ...]
    violation_rate: float
    knob_changes: int
    final_knobs: Knobs


@dataclass(frozen=True)
class BenchRecord:
    """How one policy did on one model (see docs/sim.md for every field's definition)."""

    model: str
    policy: str
    approach: str
    final_knobs: Knobs
    online_capacity_rps: float
    oracle_capacity_rps: float
    oracle_knobs: Knobs
    ratio_to_oracle: float | None
    violation_rate: float
    settle_windows: int | None
    failed_requests: int
    knob_changes: int
    slo_ms: float
    percentile: float
    window_s: float
    ratio_to_aimd: float | None = None
    ratio_to_paper: float | None = None
    ratio_to_oracle_run: float | None = None  # vs the oracle's knobs on the same staircase
    scenario_violation_rate: float | None = None  # the dynamic scenarios only (loads <= 75 %)
    low_staircase: bool = False  # capacity measured on the staircase starting at 5 %
    scenarios: tuple[ScenarioResult, ...] = field(default_factory=tuple)
    error: str | None = None  # the run failed (exception type and message); capacity 0
    attempts: int = 1  # runs made (a run whose server crashed or stalled is repeated)
    failed_request_log: str = ""  # the failed requests' times and messages, if any
    # #19's figures. Per staircase step (``metrics.step_stats``), and from them, against the
    # oracle's run on the same staircase (its online capacity; the sweep's without one):
    steps: tuple[StepStats, ...] = ()
    violation_rate_within: float | None = None  # <= 0.9 x capacity, 10 windows after changes
    changes_after_settle_max: int | None = None  # most changes after settling in one step
    # The interference scenario: share of windows over the SLO after the slowdown (sim only),
    # and the oracle policy's on the same scenario.
    interference_violation_rate: float | None = None
    oracle_interference_violation_rate: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def with_ratios(records: list[BenchRecord]) -> list[BenchRecord]:
    """Fill ``ratio_to_aimd``, ``ratio_to_paper`` and ``ratio_to_oracle_run`` from the same
    model's records, and the #19 figures judged against the oracle's run."""
    from dataclasses import replace

    cap = {(r.model, r.policy): r.online_capacity_rps for r in records}
    inter = {(r.model, r.policy): r.interference_violation_rate for r in records}
    out = []
    for r in records:
        ra = cap.get((r.model, "aimd"))
        rp = cap.get((r.model, "paper"))
        ro = cap.get((r.model, "oracle"))
        ref = ro or r.oracle_capacity_rps
        out.append(
            replace(
                r,
                ratio_to_aimd=r.online_capacity_rps / ra if ra else None,
                ratio_to_paper=r.online_capacity_rps / rp if rp else None,
                ratio_to_oracle_run=r.online_capacity_rps / ro if ro else None,
                violation_rate_within=violation_rate_within(r.steps, ref) if ref else None,
                changes_after_settle_max=changes_after_settle_max(r.steps, ref) if ref else None,
                oracle_interference_violation_rate=inter.get((r.model, "oracle")),
            )
        )
    return out
