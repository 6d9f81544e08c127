"""The policy contract: a pure function of an observation and a typed, frozen state.

A policy never does I/O and never reads a clock: time comes in ``Observation.now_s``.
State is a frozen dataclass so the controller can persist it (``core.state_codec``: to
JSON-able data and back, typed by the dataclass's annotations) and a restarted controller
can resume. The controller calls ``decide`` once per report and sends
an update only when the returned knobs differ from those in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from dnnscaler.core.types import Approach, Knobs, Observation

S = TypeVar("S")


@dataclass(frozen=True)
class Decision(Generic[S]):
    """A policy's answer: knobs to have in force, the approach it is following, new state."""

    knobs: Knobs
    state: S
    approach: Approach = Approach.UNDECIDED
    reason: str = ""


class Policy(Protocol[S]):
    """A control policy for one (agent, model)."""

    name: str

    def initial_state(self, obs: Observation) -> S:
        """State for a model first seen (or seen again after a controller restart)."""
        ...

    def decide(self, obs: Observation, state: S) -> Decision[S]:
        """Pure: the knobs to have in force after this observation, and the next state."""
        ...
