"""What happens in the fleet, as it happens: the stream behind ``dnnscaler watch``.

The control path publishes and never waits: each watcher has a bounded queue, and a watcher
that cannot keep up loses the oldest events, then is told how many it lost, rather than
slowing the controller down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dnnscaler.core.types import Knobs

QUEUE_EVENTS = 1000  # per watcher


@dataclass(frozen=True)
class Event:
    kind: str  # decision, apply, agent_connected, agent_disconnected, agent_lost,
    # slo_violation, setting, lost
    agent_id: str = ""
    model: str = ""
    message: str = ""
    old_knobs: Knobs | None = None
    new_knobs: Knobs | None = None
    generation: int = 0
    t: float = field(default_factory=time.time)


class Subscription:
    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=size)
        self.lost = 0

    def offer(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the oldest goes
            self.lost += 1
        self.queue.put_nowait(event)

    async def next(self) -> Event:
        """The next event; after an overflow, first an event saying how many were lost."""
        if self.lost:
            n, self.lost = self.lost, 0
            return Event("lost", message=f"{n} events lost: this watcher fell behind")
        return await self.queue.get()


class EventBus:
    def __init__(self, queue_events: int = QUEUE_EVENTS) -> None:
        self.queue_events = queue_events
        self._subs: set[Subscription] = set()

    @property
    def watchers(self) -> int:
        return len(self._subs)

    def publish(self, event: Event) -> None:
        for sub in self._subs:
            sub.offer(event)

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        sub = Subscription(self.queue_events)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
