"""Benchmark results: one record per model x policy, shared by the sim and real-server benches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def with_ratios(records: list[BenchRecord]) -> list[BenchRecord]:
    """Fill ``ratio_to_aimd``, ``ratio_to_paper`` and ``ratio_to_oracle_run`` from the same
    model's records."""
    from dataclasses import replace

    cap = {(r.model, r.policy): r.online_capacity_rps for r in records}
    out = []
    for r in records:
        ra = cap.get((r.model, "aimd"))
        rp = cap.get((r.model, "paper"))
        ro = cap.get((r.model, "oracle"))
        out.append(
            replace(
                r,
                ratio_to_aimd=r.online_capacity_rps / ra if ra else None,
                ratio_to_paper=r.online_capacity_rps / rp if rp else None,
                ratio_to_oracle_run=r.online_capacity_rps / ro if ro else None,
            )
        )
    return out
