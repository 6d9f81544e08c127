"""``paper``: a faithful re-implementation of DNNScaler (arXiv:2308.13803).

A phase machine, driven by elapsed time from the observations:

1. **Profiler** — three probes, each ``settle_s`` (1 s) to let the change take effect and
   then ``measure_s`` (3 s) of measurement, under the SLO: ``(b=1, n=1)``,
   ``(b=8, n=1)`` and ``(b=1, n=8)`` (8 capped by the limits and GPU memory). For each probe
   the capacity is estimated from the executed batches (``n * items / busy time``) and the
   gain of batching and of multi-tenancy over the base is compared; a probe whose mean
   compute time is over the SLO gains nothing. About 12-15 s in all.
2. **Batching scaler** (``paper_batching``) from ``b = 1`` if batching gained more.
3. **Multi-tenancy scaler** (``paper_mt``) otherwise: the ``k = 1`` and ``k = 8`` compute
   times of the probes go into matrix completion (``matrix_completion``) to pick the
   initial instance count, then the published 1 s loop.

The approach is chosen once per deployment, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from dnnscaler.core.types import Approach, Knobs, Observation, instances_that_fit
from dnnscaler.policies import paper_batching as pb
from dnnscaler.policies import paper_mt as mt
from dnnscaler.policies.base import Decision
from dnnscaler.policies.matrix_completion import MAX_INSTANCES, estimate_row
from dnnscaler.policies.window_aggregate import Aggregate

PROBE_SIZE = 8


class Phase(StrEnum):
    PROBE_BASE = "probe-base"
    PROBE_BATCH = "probe-batch"
    PROBE_MT = "probe-mt"
    BATCHING = "batching"
    MULTI_TENANCY = "multi-tenancy"


@dataclass(frozen=True)
class Probe:
    """Accumulated measurement of one profiler probe."""

    started_s: float | None = None  # when its knobs were first seen in force
    items: int = 0
    busy_ms: float = 0.0
    b1_execs: int = 0
    b1_compute_ms_sum: float = 0.0
    latency_count: int = 0
    latency_sum_ms: float = 0.0
    throughput_sum: float = 0.0
    windows: int = 0

    def capacity_rps(self, instances: int) -> float:
        if self.busy_ms > 0:
            return instances * self.items / self.busy_ms * 1000.0
        return self.throughput_sum / self.windows if self.windows else 0.0

    @property
    def compute_b1_ms(self) -> float | None:
        if self.b1_execs:
            return self.b1_compute_ms_sum / self.b1_execs
        if self.latency_count:
            return self.latency_sum_ms / self.latency_count
        return None

    def add(self, obs: Observation) -> Probe:
        w = obs.window
        items = self.items + sum(b * s.count for b, s in w.batch_stats.items())
        busy = self.busy_ms + sum(s.count * s.compute_ms_mean for s in w.batch_stats.values())
        b1 = w.batch_stats.get(1)
        lat_n = w.completed if w.latency_mean_ms is not None else 0
        return replace(
            self,
            items=items,
            busy_ms=busy,
            b1_execs=self.b1_execs + (b1.count if b1 else 0),
            b1_compute_ms_sum=self.b1_compute_ms_sum
            + (b1.count * b1.compute_ms_mean if b1 else 0.0),
            latency_count=self.latency_count + lat_n,
            latency_sum_ms=self.latency_sum_ms + lat_n * (w.latency_mean_ms or 0.0),
            throughput_sum=self.throughput_sum + w.throughput_rps,
            windows=self.windows + 1,
        )


@dataclass(frozen=True)
class PaperState:
    phase: Phase = Phase.PROBE_BASE
    probe: Probe = field(default_factory=Probe)
    base_rps: float = 0.0
    base_compute_ms: float = 0.0
    batch_rps: float = 0.0
    mt_instances: int = 0
    mt_rps: float = 0.0
    mt_compute_ms: float = 0.0
    search: pb.BinarySearch = field(default_factory=pb.BinarySearch)
    agg: Aggregate = field(default_factory=Aggregate)
    loop: mt.MtLoop = field(default_factory=mt.MtLoop)
    mc_estimates_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class PaperPolicy:
    interval_s: float = 3.0
    settle_s: float = 1.0
    measure_s: float = 3.0
    bias_step_s: float = 1.0
    name: str = "paper"

    def initial_state(self, obs: Observation) -> PaperState:
        return PaperState(search=pb.initial_search(obs.limits.max_batch_size))

    def decide(self, obs: Observation, state: PaperState) -> Decision[PaperState]:
        if state.phase in (Phase.PROBE_BASE, Phase.PROBE_BATCH, Phase.PROBE_MT):
            return self._profile(obs, state)
        if state.phase is Phase.BATCHING:
            return self._batching(obs, state)
        return self._multi_tenancy(obs, state)

    # -- profiler -------------------------------------------------------------------------

    def _probe_knobs(self, obs: Observation, phase: Phase) -> Knobs:
        if phase is Phase.PROBE_BATCH:
            return Knobs(max_batch_size=min(PROBE_SIZE, obs.limits.max_batch_size))
        if phase is Phase.PROBE_MT:
            return Knobs(instances=min(PROBE_SIZE, self._top_instances(obs)))
        return Knobs()

    def _top_instances(self, obs: Observation) -> int:
        fit = instances_that_fit(obs.limits, obs.knobs.instances, obs.instance_memory_mb, obs.gpu)
        return max(1, min(MAX_INSTANCES, fit, obs.limits.max_instances))

    def _profile(self, obs: Observation, state: PaperState) -> Decision[PaperState]:
        knobs = self._probe_knobs(obs, state.phase)
        why = f"profiling {state.phase.value}"
        in_force = (
            obs.knobs.max_batch_size == knobs.max_batch_size
            and obs.knobs.instances == knobs.instances
        )
        if not in_force:
            return Decision(knobs, replace(state, probe=Probe()), Approach.UNDECIDED, why)
        probe = state.probe
        if probe.started_s is None:
            probe = Probe(started_s=obs.now_s)
            return Decision(knobs, replace(state, probe=probe), Approach.UNDECIDED, why)
        elapsed = obs.now_s - probe.started_s
        if elapsed <= self.settle_s + 1e-9:
            return Decision(knobs, state, Approach.UNDECIDED, why)
        probe = probe.add(obs)
        if elapsed < self.settle_s + self.measure_s - 0.05:
            return Decision(knobs, replace(state, probe=probe), Approach.UNDECIDED, why)
        slo = obs.slo.latency_ms
        rps = probe.capacity_rps(knobs.instances)
        comp = probe.compute_b1_ms or 0.0
        if state.phase is Phase.PROBE_BASE:
            nxt = replace(
                state, phase=Phase.PROBE_BATCH, probe=Probe(), base_rps=rps, base_compute_ms=comp
            )
            return Decision(self._probe_knobs(obs, nxt.phase), nxt, Approach.UNDECIDED, why)
        if state.phase is Phase.PROBE_BATCH:
            batch_ok = probe.latency_count > 0 and probe.latency_sum_ms <= slo * probe.latency_count
            nxt = replace(
                state,
                phase=Phase.PROBE_MT,
                probe=Probe(),
                batch_rps=rps if batch_ok else 0.0,
            )
            return Decision(self._probe_knobs(obs, nxt.phase), nxt, Approach.UNDECIDED, why)
        mt_ok = comp <= slo
        done = replace(
            state,
            probe=Probe(),
            mt_instances=knobs.instances,
            mt_rps=rps if mt_ok else 0.0,
            mt_compute_ms=comp,
        )
        return self._choose(obs, done)

    def _choose(self, obs: Observation, state: PaperState) -> Decision[PaperState]:
        base = max(state.base_rps, 1e-9)
        gain_b = state.batch_rps / base
        gain_m = state.mt_rps / base
        if gain_b >= gain_m:
            search = pb.initial_search(obs.limits.max_batch_size)
            nxt = replace(state, phase=Phase.BATCHING, search=search, agg=Aggregate())
            return Decision(
                Knobs(),
                nxt,
                Approach.BATCHING,
                f"profiler: batching gains {gain_b:.2f}x vs multi-tenancy {gain_m:.2f}x",
            )
        measured = {1: state.base_compute_ms}
        if state.mt_instances > 1 and state.mt_compute_ms > 0:
            measured[state.mt_instances] = state.mt_compute_ms
        estimates = estimate_row(measured) if state.base_compute_ms > 0 else ()
        top = self._top_instances(obs)
        k = mt.initial_instances(estimates, obs.slo.latency_ms, top) if estimates else 1
        loop = mt.MtLoop(instances=k, wait_until_s=obs.now_s + self.bias_step_s * k)
        nxt = replace(state, phase=Phase.MULTI_TENANCY, loop=loop, mc_estimates_ms=estimates)
        return Decision(
            Knobs(instances=k),
            nxt,
            Approach.MULTI_TENANCY,
            f"profiler: multi-tenancy gains {gain_m:.2f}x vs batching {gain_b:.2f}x; "
            f"matrix completion starts at n={k}",
        )

    # -- scalers --------------------------------------------------------------------------

    def _batching(self, obs: Observation, state: PaperState) -> Decision[PaperState]:
        top = pb.max_index(obs.limits.max_batch_size)
        search = state.search
        knobs = Knobs(max_batch_size=min(search.batch_size, top + 1), instances=1)
        if obs.knobs.max_batch_size != knobs.max_batch_size or obs.knobs.instances != 1:
            return Decision(knobs, replace(state, agg=Aggregate()), Approach.BATCHING, "applying")
        agg = state.agg.add(obs)
        if not agg.complete(obs.now_s, self.interval_s):
            return Decision(knobs, replace(state, agg=agg), Approach.BATCHING, "aggregating")
        if agg.mean_ms is None:
            return Decision(
                knobs, replace(state, agg=agg.restarted(obs.now_s)), Approach.BATCHING, "idle"
            )
        new = pb.step(search, agg.mean_ms, obs.slo.latency_ms, top)
        return Decision(
            Knobs(max_batch_size=new.batch_size, instances=1),
            replace(state, search=new, agg=agg.restarted(obs.now_s)),
            Approach.BATCHING,
            f"mean {agg.mean_ms:.1f}ms vs SLO {obs.slo.latency_ms:.1f}ms: "
            f"b={new.batch_size} [{new.lo + 1}..{new.hi + 1}]",
        )

    def _multi_tenancy(self, obs: Observation, state: PaperState) -> Decision[PaperState]:
        loop = state.loop
        top = self._top_instances(obs)
        if loop.instances > top:
            loop = replace(loop, instances=top, recent=())
        knobs = Knobs(max_batch_size=1, instances=loop.instances)
        if obs.knobs.instances != loop.instances or obs.knobs.max_batch_size != 1:
            return Decision(
                knobs,
                replace(state, loop=replace(loop, recent=())),
                Approach.MULTI_TENANCY,
                "applying",
            )
        w = obs.window
        if w.completed > 0 and w.latency_mean_ms is not None:
            loop = replace(loop, recent=mt.remember(loop.recent, w.completed, w.latency_mean_ms))
        latency = mt.recent_mean(loop.recent)
        if latency is None:
            return Decision(knobs, replace(state, loop=loop), Approach.MULTI_TENANCY, "idle")
        new, why = mt.step(loop, obs.now_s, latency, obs.slo.latency_ms, top, self.bias_step_s)
        return Decision(
            Knobs(max_batch_size=1, instances=new.instances),
            replace(state, loop=new),
            Approach.MULTI_TENANCY,
            why,
        )
