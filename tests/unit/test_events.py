"""The watch stream's bus: publishing never blocks, a slow watcher loses the oldest events
and is told how many."""

from __future__ import annotations

import asyncio

from dnnscaler.controller.events import Event, EventBus


async def test_each_watcher_gets_every_event_in_order() -> None:
    bus = EventBus()
    with bus.subscribe() as a, bus.subscribe() as b:
        assert bus.watchers == 2
        for i in range(3):
            bus.publish(Event("decision", message=str(i)))
        for sub in (a, b):
            assert [(await sub.next()).message for _ in range(3)] == ["0", "1", "2"]
    assert bus.watchers == 0
    bus.publish(Event("decision"))  # nobody watching: nothing to do


async def test_a_watcher_that_falls_behind_loses_the_oldest_and_is_told() -> None:
    bus = EventBus(queue_events=3)
    with bus.subscribe() as sub:
        for i in range(5):
            bus.publish(Event("apply", message=str(i)))
        first = await sub.next()
        assert first.kind == "lost" and first.message.startswith("2 events lost")
        assert [(await sub.next()).message for _ in range(3)] == ["2", "3", "4"]
        waiting = asyncio.create_task(sub.next())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        bus.publish(Event("setting", message="x"))
        assert (await asyncio.wait_for(waiting, 1)).message == "x"


def test_an_event_reads_as_one_line() -> None:
    from dnnscaler.admin_cli import event_line
    from dnnscaler.v1 import admin_pb2, common_pb2

    e = admin_pb2.Event(
        time=0.0,
        kind="decision",
        agent_id="node-a-gpu0",
        model="mnet",
        message="policy: p99 12 ms < band",
        old_knobs=common_pb2.Knobs(max_batch_size=1, instances=1),
        new_knobs=common_pb2.Knobs(max_batch_size=8, instances=2),
    )
    line = event_line(e)
    assert "decision" in line and "node-a-gpu0/mnet b1/n1 → b8/n2: policy: p99 12 ms" in line
    assert event_line(admin_pb2.Event(kind="lost", message="3 events lost")).endswith(
        "lost               -: 3 events lost"
    )
