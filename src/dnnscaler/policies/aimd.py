"""``aimd``: Clipper-style additive-increase / multiplicative-decrease batching baseline.

As described for the DNNScaler paper's baseline: a 3 s control interval (1 s reports are
aggregated by elapsed time), the p95 latency of the interval, the dead band
``[0.85 * SLO, SLO]`` (hold), ``+4`` on the batch size below the band, ``x0.9`` (floored,
at least 1) above the SLO. One instance, no batcher delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dnnscaler.core.types import Approach, Knobs, Observation
from dnnscaler.policies.base import Decision
from dnnscaler.policies.window_aggregate import Aggregate

BAND_LOW = 0.85


@dataclass(frozen=True)
class AimdState:
    """The batch size AIMD is steering and the interval being aggregated."""

    batch_size: int = 1
    agg: Aggregate = field(default_factory=Aggregate)


@dataclass(frozen=True)
class AimdPolicy:
    interval_s: float = 3.0
    additive_step: int = 4
    backoff: float = 0.9
    name: str = "aimd"

    def initial_state(self, obs: Observation) -> AimdState:
        return AimdState(batch_size=1)

    def decide(self, obs: Observation, state: AimdState) -> Decision[AimdState]:
        bmax = obs.limits.max_batch_size
        bs = min(max(1, state.batch_size), bmax)
        agg = state.agg.add(obs)
        slo = obs.slo.latency_ms
        knobs = Knobs(max_batch_size=bs, instances=1, queue_delay_us=0)
        if obs.knobs != knobs:
            # Our last decision is not in force yet (or was rolled back): re-ask, restart.
            return Decision(
                knobs, AimdState(bs, Aggregate()), Approach.BATCHING, f"applying b={bs}"
            )
        if not agg.complete(obs.now_s, self.interval_s):
            return Decision(knobs, AimdState(bs, agg), Approach.BATCHING, "aggregating")
        p95 = agg.p95_ms
        if p95 is None:
            return Decision(
                knobs, AimdState(bs, agg.restarted(obs.now_s)), Approach.BATCHING, "no traffic"
            )
        if p95 > slo:
            new_bs = max(1, math.floor(bs * self.backoff))
            reason = f"p95 {p95:.1f}ms > SLO {slo:.1f}ms: b {bs}->{new_bs}"
        elif p95 < BAND_LOW * slo:
            new_bs = min(bmax, bs + self.additive_step)
            reason = f"p95 {p95:.1f}ms < band: b {bs}->{new_bs}"
        else:
            new_bs = bs
            reason = f"p95 {p95:.1f}ms in band: hold b={bs}"
        new_knobs = Knobs(max_batch_size=new_bs, instances=1, queue_delay_us=0)
        return Decision(
            new_knobs, AimdState(new_bs, agg.restarted(obs.now_s)), Approach.BATCHING, reason
        )
