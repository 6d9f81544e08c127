"""``dnnscaler bench sim``: every policy against the oracle on simulated GPUs, in virtual time.

Per profile: an oracle sweep at the SLO (and at half the SLO, for the SLO-change scenario),
then per policy a staircase run and three dynamic scenarios (load drops from 70 % to 30 % of
oracle capacity and returns; SLO halved mid-run; co-located work slows the GPU 1.5x
mid-run). All runs of a profile share the arrival seed (common random numbers), so policies
are compared on the same request stream.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

from dnnscaler.bench import metrics as m
from dnnscaler.bench.online import RunTrace, WindowRecord, run_online
from dnnscaler.bench.oracle import MeasureSpec, OracleResult, oracle_sweep
from dnnscaler.bench.records import BenchRecord, ScenarioResult, with_ratios
from dnnscaler.core.types import Knobs, Slo
from dnnscaler.policies.base import Policy
from dnnscaler.policies.registry import make_policy
from dnnscaler.sim.profile import Profile

BENCH_POLICIES: tuple[str, ...] = ("dnnscaler", "paper", "aimd", "static-default", "oracle")


@dataclass(frozen=True)
class SimBenchConfig:
    """Everything that shapes a run; defaults are the full benchmark."""

    policies: tuple[str, ...] = BENCH_POLICIES
    seed: int = 0
    window_s: float = 1.0
    slo_ms: float | None = None  # None: each profile's default SLO
    percentile: float = 99.0
    staircase: m.Staircase = field(default_factory=m.Staircase)
    phase_windows: int = 30
    warmup_windows: int = 20
    interference: float = 1.5  # the interference scenario's slowdown of the device
    interference_load: float = 0.5  # and its load, x the oracle's capacity
    measure: MeasureSpec = field(default_factory=MeasureSpec)

    @classmethod
    def quick(cls, **kw: Any) -> SimBenchConfig:
        base = cls(
            staircase=m.Staircase(step_windows=4, min_half_requests=0),
            phase_windows=10,
            warmup_windows=8,
            measure=MeasureSpec(warmup_requests=200, measure_requests=1200, bisect_steps=5),
        )
        return replace(base, **kw)

    def slo_for(self, profile: Profile) -> Slo:
        return Slo(latency_ms=self.slo_ms or profile.default_slo_ms, percentile=self.percentile)

    def window_for(self, profile: Profile) -> float:
        """Control window: the configured one, stretched to >= 10 batch-1 latencies so that
        second-scale models complete requests in every window."""
        return max(self.window_s, 10.0 * profile.lat_k_ms[0] / 1000.0)


@dataclass(frozen=True)
class Oracles:
    full: OracleResult
    half: OracleResult


@dataclass(frozen=True)
class PolicyOutcome:
    record: BenchRecord
    staircase: tuple[WindowRecord, ...]


def check_policies(names: Sequence[str]) -> None:
    bad = [n for n in names if n not in BENCH_POLICIES]
    if bad:
        raise ValueError(f"unknown policy {bad[0]!r}; valid: {', '.join(BENCH_POLICIES)}")


def _seed(cfg: SimBenchConfig, profile: Profile, what: str) -> int:
    return zlib.crc32(f"{cfg.seed}/{profile.name}/{what}".encode())


def run_oracles(profile: Profile, cfg: SimBenchConfig) -> Oracles:
    slo = cfg.slo_for(profile)
    spec = replace(cfg.measure, seed=_seed(cfg, profile, "oracle"))
    full = oracle_sweep(profile, slo.latency_ms, slo.percentile, spec)
    half = oracle_sweep(profile, slo.latency_ms / 2, slo.percentile, spec)
    return Oracles(full, half)


def make_bench_policy(name: str, profile: Profile, oracle: OracleResult) -> Policy[Any]:
    if name == "static-default":
        return make_policy("static", knobs=Knobs(profile.max_batch_size, 1, 0))
    if name == "oracle":
        return make_policy("static", knobs=oracle.knobs)
    return make_policy(name)


def _ramp(i: int, warm: int, st: m.Staircase, cap: float) -> float:
    """Warm-up load: a linear ramp from 1/warm of the first step's rate up to it."""
    return st.start_frac * cap * (i + 1) / warm


def initial_knobs(name: str, profile: Profile, oracle: OracleResult) -> Knobs:
    """What is deployed when a policy takes over: the oracle's config for the oracle, the
    server's default (one instance, the model's own max batch, no queue delay) otherwise."""
    if name == "oracle":
        return oracle.knobs
    return Knobs(profile.max_batch_size, 1, 0)


def _final(windows: Sequence[WindowRecord]) -> tuple[Knobs, str]:
    w = windows[-1]
    return w.knobs, w.approach


@dataclass(frozen=True)
class StaircaseRun:
    trace: RunTrace
    staircase: m.Staircase
    online_rps: float
    passed_windows: tuple[WindowRecord, ...]  # warm-up excluded, up to the highest passed step
    steps: tuple[m.StepStats, ...] = ()  # per step, warm-up excluded (#19's figures)


def run_staircase(
    profile: Profile,
    name: str,
    oracles: Oracles,
    cfg: SimBenchConfig,
    st: m.Staircase,
    seed_tag: str,
) -> StaircaseRun:
    """One staircase run of a fresh policy: ramp up to the first step, then climb."""
    slo = cfg.slo_for(profile)
    win = cfg.window_for(profile)
    cap = oracles.full.capacity_rps
    warm = cfg.warmup_windows

    def stop(ws: Sequence[WindowRecord], lats: Sequence[Any]) -> bool:
        if len(ws) <= warm or (len(ws) - warm) % st.step_windows:
            return False
        return m.should_stop(st, ws, m.step_results(st, ws[warm:], lats[warm:], slo.percentile))

    stair = run_online(
        profile,
        make_bench_policy(name, profile, oracles.full),
        label=name,
        rate_at=lambda i: st.rate(cap, i - warm) if i >= warm else _ramp(i, warm, st, cap),
        slo_at=lambda i: slo,
        windows=warm + st.max_steps * st.step_windows,
        window_s=win,
        seed=_seed(cfg, profile, seed_tag),
        initial_knobs=initial_knobs(name, profile, oracles.full),
        stop=stop,
    )
    steps = m.step_results(st, stair.windows[warm:], stair.latencies_ms[warm:], slo.percentile)
    online, best_j = m.online_capacity(steps)
    upto = stair.windows[warm : warm + (best_j + 1) * st.step_windows] if best_j >= 0 else ()
    stats = m.step_stats(st, stair.windows[warm:])
    return StaircaseRun(stair, st, online, tuple(upto), stats)


def run_policy(profile: Profile, name: str, oracles: Oracles, cfg: SimBenchConfig) -> PolicyOutcome:
    """Staircase plus the dynamic scenarios for one policy on one profile.

    A policy that passes no step of the staircase (it cannot carry 30 % of the oracle's
    capacity) is measured again on a low staircase starting at one step (5 %), so that its
    capacity, and the ratios to it, stay finite; ``low_staircase`` flags it.
    """
    slo = cfg.slo_for(profile)
    half_slo = Slo(slo.latency_ms / 2, slo.percentile)
    win = cfg.window_for(profile)
    cap = oracles.full.capacity_rps

    def fresh() -> Policy[Any]:
        return make_bench_policy(name, profile, oracles.full)

    knobs0 = initial_knobs(name, profile, oracles.full)
    main = run_staircase(profile, name, oracles, cfg, cfg.staircase.for_rate(cap, win), "staircase")
    run, low_stair = main, False
    if main.online_rps <= 0 and cfg.staircase.start_frac > cfg.staircase.step_frac:
        st_low = replace(cfg.staircase, start_frac=cfg.staircase.step_frac).for_rate(cap, win)
        run = run_staircase(profile, name, oracles, cfg, st_low, "staircase-low")
        low_stair = True
    stair, online, upto = run.trace, run.online_rps, run.passed_windows
    final_knobs, approach = _final(upto or stair.windows)

    p = cfg.phase_windows
    high, low = 0.7 * cap, 0.3 * cap
    load = _scenario(
        profile,
        fresh(),
        name="load-drop",
        rate_at=lambda i: low if p <= i < 2 * p else high,
        slo_at=lambda i: slo,
        windows=3 * p,
        changes=(0, p, 2 * p),
        window_s=win,
        seed=_seed(cfg, profile, "load-drop"),
        rate=high,
        initial_knobs=knobs0,
    )
    rate_slo = min(0.5 * cap, 0.7 * oracles.half.capacity_rps)
    slo_run = _scenario(
        profile,
        fresh(),
        name="slo-halved",
        rate_at=lambda i: rate_slo,
        slo_at=lambda i: slo if i < p else half_slo,
        windows=2 * p,
        changes=(0, p),
        window_s=win,
        seed=_seed(cfg, profile, "slo-halved"),
        rate=rate_slo,
        initial_knobs=knobs0,
    )
    rate_int = cfg.interference_load * cap
    int_run = _scenario(
        profile,
        fresh(),
        name="interference",
        rate_at=lambda i: rate_int,
        slo_at=lambda i: slo,
        windows=2 * p,
        changes=(0, p),
        window_s=win,
        seed=_seed(cfg, profile, "interference"),
        rate=rate_int,
        initial_knobs=knobs0,
        interference_at=lambda i: 1.0 if i < p else cfg.interference,
    )
    scen = [*load[1].windows, *slo_run[1].windows, *int_run[1].windows]
    scen_windows = [*upto, *scen]
    rec = BenchRecord(
        model=profile.name,
        policy=name,
        approach=approach,
        final_knobs=final_knobs,
        online_capacity_rps=online,
        oracle_capacity_rps=cap,
        oracle_knobs=oracles.full.knobs,
        ratio_to_oracle=online / cap if cap > 0 else None,
        violation_rate=m.violation_rate(scen_windows),
        scenario_violation_rate=m.violation_rate(scen),
        settle_windows=load[0].settle_windows[0],
        failed_requests=stair.failed_requests
        + load[1].failed_requests
        + slo_run[1].failed_requests
        + int_run[1].failed_requests,
        knob_changes=stair.knob_changes,
        slo_ms=slo.latency_ms,
        percentile=slo.percentile,
        window_s=win,
        scenarios=(load[0], slo_run[0], int_run[0]),
        low_staircase=low_stair,
        steps=run.steps,
        interference_violation_rate=m.violation_rate(int_run[1].windows[p:]),
    )
    return PolicyOutcome(rec, stair.windows)


def _scenario(
    profile: Profile,
    policy: Policy[Any],
    *,
    name: str,
    rate_at: Callable[[int], float],
    slo_at: Callable[[int], Slo],
    windows: int,
    changes: tuple[int, ...],
    window_s: float,
    seed: int,
    rate: float,
    initial_knobs: Knobs,
    interference_at: Callable[[int], float] | None = None,
) -> tuple[ScenarioResult, RunTrace]:
    tr = run_online(
        profile,
        policy,
        label=name,
        rate_at=rate_at,
        slo_at=slo_at,
        windows=windows,
        window_s=window_s,
        seed=seed,
        initial_knobs=initial_knobs,
        interference_at=interference_at,
    )
    bounds = [*changes, len(tr.windows)]
    settles = tuple(m.settle_windows(tr.windows[a:b]) for a, b in itertools.pairwise(bounds))
    res = ScenarioResult(
        name=name,
        rate_rps=rate,
        settle_windows=settles,
        violation_rate=m.violation_rate(tr.windows),
        knob_changes=tr.knob_changes,
        final_knobs=tr.windows[-1].knobs,
    )
    return res, tr


# ------------------------------------------------------------------------ orchestration
def _oracle_task(args: tuple[Profile, SimBenchConfig]) -> tuple[str, Oracles]:
    profile, cfg = args
    return profile.name, run_oracles(profile, cfg)


def _policy_task(args: tuple[Profile, str, Oracles, SimBenchConfig]) -> PolicyOutcome:
    profile, name, oracles, cfg = args
    return run_policy(profile, name, oracles, cfg)


def _cost(profile: Profile, policy: str, oracles: Oracles, cfg: SimBenchConfig) -> float:
    """Rough relative cost of a policy task, to schedule the longest first."""
    win = cfg.window_for(profile)
    steps = cfg.staircase.for_rate(oracles.full.capacity_rps, win).step_windows
    requests = oracles.full.capacity_rps * win * steps
    per_window = 5.0 if policy in ("dnnscaler", "paper") else 1.0
    return steps * per_window + requests / 2000.0


@dataclass(frozen=True)
class SimBenchResult:
    records: list[BenchRecord]
    staircases: dict[tuple[str, str], tuple[WindowRecord, ...]]
    oracles: dict[str, Oracles]
    elapsed_s: float


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def run_sim_bench(
    profiles: Sequence[Profile],
    cfg: SimBenchConfig,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
) -> SimBenchResult:
    """Oracles for every profile, then every policy on every profile; ``jobs`` processes."""
    check_policies(cfg.policies)
    t0 = time.perf_counter()
    tick: Progress = progress or (lambda phase, done, total: None)
    oracles: dict[str, Oracles] = {}
    otasks = [(p, cfg) for p in profiles]
    total = len(otasks) + len(profiles) * len(cfg.policies)
    done = 0
    outcomes: list[PolicyOutcome] = []
    ptasks = []
    if jobs <= 1:
        for t in otasks:
            name, o = _oracle_task(t)
            oracles[name] = o
            done += 1
            tick("oracle", done, total)
        for p in profiles:
            for pol in cfg.policies:
                outcomes.append(_policy_task((p, pol, oracles[p.name], cfg)))
                done += 1
                tick(f"{p.name} {pol}", done, total)
    else:
        # Spawned, not forked: a fork copies the caller's threads' objects without the
        # threads (a process that has used gRPC holds channels), and a child that collects
        # them can spin for ever in a dead thread's join (seen: `bench sim` under pytest
        # after the gRPC tests, one child at 100 % CPU in Thread.join(0.2), 15 min).
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=spawn) as ex:
            for name, o in ex.map(_oracle_task, otasks):
                oracles[name] = o
                done += 1
                tick("oracle", done, total)
            ptasks = [(p, pol, oracles[p.name], cfg) for p in profiles for pol in cfg.policies]
            ptasks.sort(key=lambda t: -_cost(t[0], t[1], t[2], cfg))  # longest first
            futs = [ex.submit(_policy_task, t) for t in ptasks]
            for fut in as_completed(futs):
                out = fut.result()
                outcomes.append(out)
                done += 1
                tick(f"{out.record.model} {out.record.policy}", done, total)
    rank = {p.name: i for i, p in enumerate(profiles)}
    outcomes.sort(key=lambda o: (rank[o.record.model], cfg.policies.index(o.record.policy)))
    records = with_ratios([o.record for o in outcomes])
    stairs = {(o.record.model, o.record.policy): o.staircase for o in outcomes}
    return SimBenchResult(records, stairs, oracles, time.perf_counter() - t0)
