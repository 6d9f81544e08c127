"""Controller overload: agents report far faster than the policies can decide.

A real controller process; simulated agents on real gRPC streams report 100 times a
second (not once), apply the knob updates they get (so the policy does its full work),
and number each report in its first model's throughput. Overload must cost only stale
reports: the queue holds at most one report per agent, every report read is either
decided or superseded by its agent's newer one, each agent's last report is the one
decided last, and the controller's RSS does not grow with what it was sent.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dnnscaler.bench.scale_agents import SimAgent
from dnnscaler.v1 import agent_pb2, agent_pb2_grpc

from .processes import Daemon, controller, free_port

AGENTS = 12
MODELS = 10
FLOOD_S = 8.0
# Each agent's reports per second: 100x the normal rate, and with MODELS models each, far
# more decisions than the controller makes in a second, but few enough messages that the
# streams are read as fast as they come (what would pile up is decisions, not bytes).
RATE_HZ = 100.0


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Flooder:
    """One agent reporting at ``RATE_HZ`` on its own stream."""

    def __init__(self, i: int, stub: agent_pb2_grpc.AgentServiceStub) -> None:
        self.agent = SimAgent(f"flood-{i:02d}", [f"m{j}" for j in range(MODELS)], random.Random(i))
        self.stub = stub
        self.sent = 0
        self.bytes = 0
        self.last_seq = 0
        self.welcomed = asyncio.Event()

    async def run(self, stop: asyncio.Event, release: asyncio.Event) -> None:
        """Flood until ``stop``; hold the stream open until ``release`` (the controller
        reads what is still in flight)."""
        call = self.stub.Connect()
        applied: list[agent_pb2.AgentMessage] = []
        await call.write(self.agent.hello())

        async def read() -> None:
            async for msg in call:
                if msg.WhichOneof("kind") == "welcome":
                    self.welcomed.set()
                elif msg.WhichOneof("kind") == "knob_update":
                    applied.append(self.agent.apply(msg.knob_update))  # one writer per call

        reader = asyncio.create_task(read())
        try:
            await self.welcomed.wait()
            while not stop.is_set():
                while applied:
                    await call.write(applied.pop(0))
                msg = self.agent.next_report()
                w = msg.report.models[0].window
                w.throughput_rps = w.completed = msg.report.seq  # the report's number
                await call.write(msg)
                self.sent += 1
                self.bytes += msg.ByteSize()
                self.last_seq = msg.report.seq
                await asyncio.sleep(1 / RATE_HZ)
            await release.wait()
        finally:
            reader.cancel()
            call.cancel()


@pytest.mark.slow
@pytest.mark.serial  # reports faster than the controller can process them
async def test_overload_keeps_one_report_per_agent_and_the_newest_wins(tmp_path: Path) -> None:
    address, mport = f"127.0.0.1:{free_port()}", free_port()
    ctl: Daemon = controller(
        tmp_path,
        address,
        "--metrics-port",
        str(mport),
        "--state-path",
        str(tmp_path / "controller.db"),
    )
    channel = grpc.aio.insecure_channel(address)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert ctl.alive(), ctl.tail()
            try:
                _scrape(mport)
                break
            except OSError:
                assert time.monotonic() < deadline, ctl.tail()
                await asyncio.sleep(0.2)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        flooders = [Flooder(i, stub) for i in range(AGENTS)]
        stop, release = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(f.run(stop, release)) for f in flooders]
        await asyncio.wait_for(asyncio.gather(*(f.welcomed.wait() for f in flooders)), 30)
        # Sample the queue and RSS through the flood; RSS from a third of the way in (the
        # loops and their policy state exist by then) to the end.
        queue_max, rss = 0.0, []
        mark: tuple[int, int] | None = None  # (RSS sample index, bytes sent) a third in
        t0 = time.monotonic()
        while time.monotonic() - t0 < FLOOD_S:
            await asyncio.sleep(0.5)
            m = _scrape(mport)
            queue_max = max(queue_max, m[("dnnscaler_report_queue", ())])
            rss.append(_rss_mb(ctl.proc.pid))
            if mark is None and time.monotonic() - t0 >= FLOOD_S / 3:
                mark = (len(rss) - 1, sum(f.bytes for f in flooders))
        stop.set()
        await asyncio.sleep(0.1)  # each flooder's last write returns
        sent = sum(f.sent for f in flooders)
        assert mark is not None
        grown_mb = max(rss[mark[0] :]) - rss[mark[0]]
        sent_mb = (sum(f.bytes for f in flooders) - mark[1]) / 2**20
        # Every report read is decided or superseded: wait until the counts add up.
        deadline = time.monotonic() + 15
        while True:
            m = _scrape(mport)
            decided = m[("dnnscaler_reports_total", ())]
            superseded = m[("dnnscaler_reports_superseded_total", ())]
            if decided + superseded >= sent or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        release.set()
        await asyncio.gather(*tasks)
        summary = (
            f"sent {sent}, decided {decided:.0f}, superseded {superseded:.0f}, queue max"
            f" {queue_max:.0f}, RSS +{grown_mb:.1f} MB while {sent_mb:.1f} MB was sent"
        )
        print(f"overload: {summary}")
        why = f"{summary}\n{ctl.tail()}"
        assert superseded > 0 and decided < sent, f"not overloaded: {why}"
        assert decided + superseded == sent, why
        assert 0 < queue_max <= AGENTS, why
        for f in flooders:
            key = (
                "dnnscaler_model_throughput_rps",
                (("agent", f.agent.agent_id), ("model", "m0")),
            )
            assert m[key] == f.last_seq, f"{f.agent.agent_id}: {m[key]} != {f.last_seq}; {why}"
        # Stale reports are dropped, not kept: what RSS grew by is a small share of what came
        # in over the same time (kept reports would take several times their wire size).
        assert grown_mb < 0.25 * sent_mb + 4, why
        assert ctl.alive(), why
    finally:
        await channel.close()
        ctl.stop()
