"""``static``: fixed knobs, e.g. the server's defaults or the oracle's config in benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field

from dnnscaler.core.types import Approach, Knobs, Observation, instances_that_fit
from dnnscaler.policies.base import Decision


@dataclass(frozen=True)
class StaticState:
    """Static policies need no memory; the empty state keeps the protocol uniform."""


@dataclass(frozen=True)
class StaticPolicy:
    """Always asks for ``knobs`` (clamped into the limits and the GPU memory)."""

    knobs: Knobs = field(default_factory=Knobs)
    name: str = "static"

    def initial_state(self, obs: Observation) -> StaticState:
        return StaticState()

    def decide(self, obs: Observation, state: StaticState) -> Decision[StaticState]:
        wanted = self.knobs.clamp(obs.limits)
        fit = instances_that_fit(obs.limits, obs.knobs.instances, obs.instance_memory_mb, obs.gpu)
        if wanted.instances > fit:
            wanted = Knobs(wanted.max_batch_size, fit, wanted.queue_delay_us)
        return Decision(wanted, state, Approach.STATIC, f"static {_fmt(wanted)}")


def _fmt(k: Knobs) -> str:
    return f"b={k.max_batch_size} n={k.instances} delay={k.queue_delay_us}us"
