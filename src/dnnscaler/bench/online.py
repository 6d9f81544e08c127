"""Run one policy online against a simulated server, one control window at a time.

The loop only moves data: advance the virtual clock one window, collect the window, build the
``Observation``, ask the policy, apply changed knobs. Load and SLO follow a schedule given as
functions of the window index, so staircases and dynamic scenarios share this code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dnnscaler.core.types import Approach, Knobs, Observation, Slo
from dnnscaler.policies.base import Policy
from dnnscaler.sim.profile import Profile
from dnnscaler.sim.server import SimServer


@dataclass(frozen=True)
class WindowRecord:
    """What happened in one control window (``latency_ms``: at the SLO percentile)."""

    t_s: float
    rate_rps: float
    slo_ms: float
    completed: int
    failed: int
    throughput_rps: float
    latency_ms: float | None
    knobs: Knobs
    approach: str
    changed: bool
    reason: str = ""  # the policy's last stated reason (diagnosis of a run from its JSON)


@dataclass(frozen=True)
class RunTrace:
    """A whole online run: per-window records plus raw latencies per window (ms)."""

    policy: str
    windows: tuple[WindowRecord, ...]
    latencies_ms: tuple[np.ndarray, ...]
    knob_changes: int
    failed_requests: int


def run_online(
    profile: Profile,
    policy: Policy[Any],
    *,
    label: str,
    rate_at: Callable[[int], float],
    slo_at: Callable[[int], Slo],
    windows: int,
    window_s: float,
    seed: int,
    initial_knobs: Knobs | None = None,
    interference_at: Callable[[int], float] | None = None,
    stop: Callable[[Sequence[WindowRecord], Sequence[np.ndarray]], bool] | None = None,
) -> RunTrace:
    """Drive ``policy`` for up to ``windows`` windows; ``stop(records, latencies)`` (called after
    each window) may end the run early."""
    knobs0 = initial_knobs or Knobs(1, 1, 0)
    srv = SimServer(profile, knobs0, seed=seed)
    limits = profile.limits()
    recs: list[WindowRecord] = []
    lats: list[np.ndarray] = []
    changes = 0
    failed = 0
    state: Any = None
    target = knobs0
    approach = Approach.UNDECIDED.value
    rate = -1.0
    for i in range(windows):
        r = rate_at(i)
        if r != rate:
            srv.set_arrival_rate(r)
            rate = r
        slo = slo_at(i)
        if interference_at is not None:
            srv.set_interference(interference_at(i))
        srv.advance_to((i + 1) * window_s)
        sample = srv.collect()
        w = sample.stats
        obs = Observation(
            now_s=srv.now_s,
            model=profile.name,
            slo=slo,
            knobs=srv.knobs,
            limits=limits,
            window=w,
            gpu=srv.gpu_telemetry(),
            instance_memory_mb=profile.instance_memory_mb,
        )
        if state is None:
            state = policy.initial_state(obs)
        dec = policy.decide(obs, state)
        state = dec.state
        approach = dec.approach.value if isinstance(dec.approach, Approach) else str(dec.approach)
        changed = False
        if dec.knobs != target:
            srv.set_knobs(dec.knobs)
            target = dec.knobs
            changes += 1
            changed = True
        lat = sample.latencies_ms
        p_lat = float(np.percentile(lat, slo.percentile)) if lat.size else None
        failed += w.failed
        recs.append(
            WindowRecord(
                t_s=srv.now_s,
                rate_rps=r,
                slo_ms=slo.latency_ms,
                completed=w.completed,
                failed=w.failed,
                throughput_rps=w.throughput_rps,
                latency_ms=p_lat,
                knobs=obs.knobs,
                approach=approach,
                changed=changed,
                reason=dec.reason,
            )
        )
        lats.append(lat)
        if stop is not None and stop(recs, lats):
            break
    return RunTrace(label, tuple(recs), tuple(lats), changes, failed)
