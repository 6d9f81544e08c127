"""Client-side latency summaries for one window of completed requests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LoadWindow:
    """What the clients saw between ``start_s`` and ``end_s`` (monotonic seconds).

    Requests are attributed to the window in which they *completed*; latencies in ms,
    percentiles with numpy's default (linear) interpolation, ``None`` when none completed.
    ``dropped`` counts arrivals not sent because ``max_in_flight`` was reached (open loop).
    """

    start_s: float
    end_s: float
    sent: int
    completed: int
    errors: int
    dropped: int
    offered_rps: float
    throughput_rps: float
    latency_mean_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    in_flight: int = 0
    # Raw latencies (ms) of the window, for benchmarks that pool windows; not serialised.
    latencies_ms: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def latency_at(self, percentile: float) -> float | None:
        if percentile <= 50:
            return self.latency_p50_ms
        if percentile <= 95:
            return self.latency_p95_ms
        return self.latency_p99_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latencies_ms", None)
        out["duration_s"] = self.duration_s
        return out


def summarize(
    start_s: float,
    end_s: float,
    latencies_s: list[float],
    *,
    sent: int,
    errors: int,
    dropped: int,
    offered_rps: float,
    in_flight: int = 0,
) -> LoadWindow:
    duration = max(end_s - start_s, 1e-9)
    if latencies_s:
        arr = np.asarray(latencies_s, dtype=np.float64) * 1000.0
        p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
        raw = arr
        mean, worst = float(arr.mean()), float(arr.max())
    else:
        p50 = p95 = p99 = mean = worst = None  # type: ignore[assignment]
        raw = np.empty(0)
    return LoadWindow(
        start_s=start_s,
        end_s=end_s,
        sent=sent,
        completed=len(latencies_s),
        errors=errors,
        dropped=dropped,
        offered_rps=offered_rps,
        throughput_rps=len(latencies_s) / duration,
        latency_mean_ms=mean,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        latency_p99_ms=p99,
        latency_max_ms=worst,
        in_flight=in_flight,
        latencies_ms=raw,
    )
