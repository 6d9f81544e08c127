"""The reports waiting for a decision: one slot per agent, the newest report wins.

Stream handlers only read and enqueue; one decider task takes reports out and runs the
policies (``AgentService._decide_forever``). When reports come faster than the policies
can take them, a report still waiting when its agent's next one arrives is superseded:
it carries nothing the newer one does not (each report holds every model's latest window
and knobs), so the newer one takes its slot and its place in line. The queue therefore
never holds more than one report per agent, whatever the rate, and a decision is always
made on the freshest data. The stream stays read at full rate meanwhile, so apply results
and keepalives are never stuck behind decisions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")
M = TypeVar("M")


@dataclass(frozen=True)
class Queued(Generic[R, M]):
    record: R
    report: M
    received_s: float


class ReportQueue(Generic[R, M]):
    """Agent id -> its newest report, served oldest-waiting first (a dict keeps insertion
    order; replacing a value keeps the agent's place)."""

    def __init__(self) -> None:
        self._slots: dict[str, Queued[R, M]] = {}
        self._ready = asyncio.Event()
        self.superseded = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._slots)

    def put(self, agent_id: str, item: Queued[R, M]) -> bool:
        """Queue ``item`` for ``agent_id``; True when it superseded a waiting report."""
        replaced = agent_id in self._slots
        self._slots[agent_id] = item
        if replaced:
            self.superseded += 1
        self.high_water = max(self.high_water, len(self._slots))
        self._ready.set()
        return replaced

    def pop(self) -> Queued[R, M] | None:
        """The longest-waiting agent's newest report, or None when none waits."""
        if not self._slots:
            self._ready.clear()
            return None
        agent_id = next(iter(self._slots))
        return self._slots.pop(agent_id)

    async def wait(self) -> None:
        """Until a report waits."""
        while not self._slots:
            self._ready.clear()
            await self._ready.wait()
