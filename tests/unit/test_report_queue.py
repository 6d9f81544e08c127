"""The decision queue: one slot per agent, the newest report wins and keeps its place."""

from __future__ import annotations

import asyncio

from dnnscaler.controller.report_queue import Queued, ReportQueue


def _q(agent: str, seq: int) -> Queued[str, int]:
    return Queued(agent, seq, 0.0)


def test_newest_report_per_agent_wins_and_keeps_the_agents_place() -> None:
    q: ReportQueue[str, int] = ReportQueue()
    assert q.put("a", _q("a", 1)) is False
    assert q.put("b", _q("b", 1)) is False
    assert q.put("a", _q("a", 2)) is True  # a's first report is stale: superseded
    assert q.put("a", _q("a", 3)) is True
    assert (len(q), q.superseded, q.high_water) == (2, 2, 2)
    first, second = q.pop(), q.pop()
    assert first is not None and second is not None
    assert (first.record, first.report) == ("a", 3)  # a waited longest: served first
    assert (second.record, second.report) == ("b", 1)
    assert q.pop() is None


def test_the_queue_never_holds_more_than_one_report_per_agent() -> None:
    q: ReportQueue[str, int] = ReportQueue()
    for seq in range(1000):
        for agent in ("a", "b", "c"):
            q.put(agent, _q(agent, seq))
    assert (len(q), q.high_water, q.superseded) == (3, 3, 2997)


async def test_wait_returns_once_a_report_is_queued() -> None:
    q: ReportQueue[str, int] = ReportQueue()
    waiter = asyncio.create_task(q.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.put("a", _q("a", 1))
    await asyncio.wait_for(waiter, 1)
    assert q.pop() is not None and q.pop() is None
