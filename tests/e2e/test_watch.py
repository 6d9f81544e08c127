"""``watch``: decisions, applies, agents connecting and going, SLO violations and settings as
they happen, over real gRPC and through the CLI (which ends cleanly on Ctrl-C)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, admin_pb2_grpc, common_pb2

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)


class Watcher:
    """A Watch stream read in the background into ``events``."""

    def __init__(self, stub: admin_pb2_grpc.AdminServiceStub, **filters: str) -> None:
        self.events: list[admin_pb2.Event] = []
        self.call = stub.Watch(admin_pb2.WatchRequest(**filters))
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for e in self.call:
            self.events.append(e)

    def kinds(self, model: str | None = None) -> list[str]:
        return [e.kind for e in self.events if model is None or e.model == model]

    def stop(self) -> None:
        self.call.cancel()


async def test_watch_streams_what_happens(controller, admin, start_agent) -> None:
    everything = Watcher(admin)
    only_b = Watcher(admin, model="b")
    await asyncio.sleep(0.2)  # both subscribed before anything happens
    agent = await start_agent(
        controller.address,
        "node-a-gpu0",
        {"a": ("imagenet/Inc-V1", 40.0), "b": ("imagenet/Inc-V1", 40.0)},
    )
    await wait_for(lambda: "agent_connected" in everything.kinds())
    await wait_for(lambda: {"decision", "apply"} <= set(everything.kinds("a")))
    decision = next(e for e in everything.events if e.kind == "decision")
    assert decision.HasField("old_knobs") and decision.HasField("new_knobs")
    assert decision.old_knobs != decision.new_knobs and decision.message.startswith("policy:")
    await admin.SetSlo(
        admin_pb2.SetSloRequest(model="a", slo=common_pb2.Slo(percentile=99, latency_ms=0.5))
    )
    await wait_for(lambda: "slo_violation" in everything.kinds("a"))
    assert "setting" in everything.kinds("a")
    await agent.stop()
    await wait_for(lambda: "agent_disconnected" in everything.kinds())
    # The filtered watcher saw only model b's events.
    assert only_b.events and {e.model for e in only_b.events} == {"b"}
    for w in (everything, only_b):
        w.stop()
    assert controller.registry.events.watchers <= 2


async def test_watch_refuses_bad_filters(controller, admin) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        async for _ in admin.Watch(admin_pb2.WatchRequest(model="m" * 300)):
            pass
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cli_watch_follows_and_ends_cleanly_on_ctrl_c(controller, start_agent) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dnnscaler.cli",
        "watch",
        "--json",
        "--controller",
        controller.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # As a process started in the background by a non-interactive shell (CI, nohup)
        # inherits it: SIGINT ignored. Python then raises no KeyboardInterrupt, and a watch
        # that relied on one ran on (fresh-clone run 29); the CLI must handle SIGINT itself.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        await wait_for(lambda: controller.registry.events.watchers == 1, timeout_s=30)
        await start_agent(controller.address, "node-a-gpu0", {"a": ("imagenet/Inc-V1", 40.0)})
        seen: list[dict[str, Any]] = []
        assert proc.stdout is not None and proc.stderr is not None
        while not any(e["kind"] == "decision" for e in seen):
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert line, (await proc.stderr.read()).decode()
            seen.append(json.loads(line))
        assert seen[0]["kind"] == "agent_connected", seen
        proc.send_signal(signal.SIGINT)
        try:
            rc = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(
                f"watch still running 30 s after SIGINT; stderr: {(await proc.stderr.read())!r}"
            ) from None
        err = (await proc.stderr.read()).decode()
        assert rc == 0 and "Traceback" not in err, (rc, err)
        await wait_for(lambda: controller.registry.events.watchers == 0)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
