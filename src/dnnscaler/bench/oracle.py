"""The oracle: the best static config of a profile under an SLO, by measured capacity.

Capacity of a config = the highest open-loop Poisson rate at which the p-th percentile of
end-to-end latency stays within the SLO over a fixed measurement (a fixed number of requests
after a warm-up, fixed seed), found by bisection. The sweep stays affordable by pruning: a
config is skipped when its analytic bound (the best ``m * b' / latency(b', m)`` over batch
sizes ``b' <= b`` and busy instances ``m <= n`` whose service time alone fits the SLO) cannot
beat the best capacity found by 1 %, or when it fails at that rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dnnscaler.core.types import Knobs
from dnnscaler.sim.profile import Profile
from dnnscaler.sim.server import SimServer


@dataclass(frozen=True)
class MeasureSpec:
    """How long each capacity probe runs (in requests, so slow and fast models cost alike)."""

    warmup_requests: int = 500
    measure_requests: int = 8000
    bisect_steps: int = 7
    seed: int = 0


@dataclass(frozen=True)
class ConfigCapacity:
    knobs: Knobs
    bound_rps: float
    capacity_rps: float | None  # None: pruned (cannot beat the best found)


@dataclass(frozen=True)
class OracleResult:
    knobs: Knobs
    capacity_rps: float
    slo_ms: float
    percentile: float
    configs: tuple[ConfigCapacity, ...]
    probes: int


def batch_grid(max_batch_size: int) -> list[int]:
    """``1, 2, 4, ...`` up to and including ``max_batch_size``."""
    out, b = [], 1
    while b < max_batch_size:
        out.append(b)
        b *= 2
    out.append(max_batch_size)
    return out


def config_bound_rps(profile: Profile, knobs: Knobs, slo_ms: float) -> float:
    """Upper bound on a config's capacity: full batches whose service time fits the SLO, with
    any number ``m <= n`` of instances busy (latency is not monotone in ``m`` for some nets)."""
    best = 0.0
    for m in range(1, knobs.instances + 1):
        for b in range(1, knobs.max_batch_size + 1):
            lat = profile.latency_ms(b, m)
            if lat <= slo_ms:
                best = max(best, 1000.0 * m * b / lat)
    return best


def passes(
    profile: Profile,
    knobs: Knobs,
    rate_rps: float,
    slo_ms: float,
    percentile: float,
    spec: MeasureSpec,
) -> bool:
    """Does ``knobs`` hold the SLO at ``rate_rps``? One fixed-seed open-loop measurement."""
    srv = SimServer(profile, knobs, seed=spec.seed)
    srv.set_arrival_rate(rate_rps)
    srv.advance_to(spec.warmup_requests / rate_rps)
    srv.collect()
    srv.advance_to((spec.warmup_requests + spec.measure_requests) / rate_rps)
    sample = srv.collect()
    lat = sample.latencies_ms
    if lat.size < spec.measure_requests // 2:
        return False  # the server fell far behind: overloaded
    # Requests still waiting count against the SLO if they have already waited too long.
    return bool(np.percentile(lat, percentile) <= slo_ms) and srv.pending_requests() <= max(
        50, 0.05 * spec.measure_requests
    )


def config_capacity(
    profile: Profile,
    knobs: Knobs,
    slo_ms: float,
    percentile: float,
    spec: MeasureSpec,
    lo: float = 0.0,
    hi: float | None = None,
) -> tuple[float, int]:
    """Capacity of one config by bisection in ``[lo, hi]``; returns (capacity, probes)."""
    top = config_bound_rps(profile, knobs, slo_ms) if hi is None else hi
    probes = 0
    if top <= 0:
        return 0.0, probes
    if lo > 0:
        probes += 1
        if not passes(profile, knobs, lo, slo_ms, percentile, spec):
            return 0.0, probes
    lo_ok = lo
    hi_bad = top * 1.001
    for _ in range(spec.bisect_steps):
        mid = (lo_ok + hi_bad) / 2 if lo_ok > 0 else hi_bad / 2
        probes += 1
        if passes(profile, knobs, mid, slo_ms, percentile, spec):
            lo_ok = mid
        else:
            hi_bad = mid
    return lo_ok, probes


def oracle_sweep(
    profile: Profile,
    slo_ms: float,
    percentile: float,
    spec: MeasureSpec | None = None,
    max_instances: int | None = None,
) -> OracleResult:
    """Measure every config on the grid (pruned), return the best."""
    spec = spec or MeasureSpec()
    nmax = max_instances or profile.max_instances
    cands = [
        Knobs(max_batch_size=b, instances=n, queue_delay_us=0)
        for b in batch_grid(profile.max_batch_size)
        for n in range(1, nmax + 1)
    ]
    bounds = {k: config_bound_rps(profile, k, slo_ms) for k in cands}
    cands.sort(key=lambda k: -bounds[k])
    best_k, best = Knobs(1, 1, 0), 0.0
    results: list[ConfigCapacity] = []
    probes = 0
    for k in cands:
        if bounds[k] <= best * 1.01:
            results.append(ConfigCapacity(k, bounds[k], None))
            continue
        cap, n = config_capacity(
            profile, k, slo_ms, percentile, spec, lo=best * 1.01 if best > 0 else 0.0
        )
        probes += n
        results.append(ConfigCapacity(k, bounds[k], cap if cap > 0 else None))
        if cap > best:
            best_k, best = k, cap
    return OracleResult(
        knobs=best_k,
        capacity_rps=best,
        slo_ms=slo_ms,
        percentile=percentile,
        configs=tuple(results),
        probes=probes,
    )
