"""Simulated agents for ``bench scale``: many per process, each on a real gRPC stream.

One worker process holds a share of the fleet. Each simulated agent has its own identity
(``agent_id`` in its hello), several models, and one ``AgentService.Connect`` stream on
which it reports every ``interval_s``, phase-spread so the controller sees a steady rate,
not a once-a-second burst. ``sent_at_unix_s`` carries the wall clock at the send: the
controller measures report-to-decision latency from it (one host, one clock). Knob updates
are applied at once (an ``ApplyResult`` and the new knobs in the next report), so the
policies run their real exploration on the controller.

The worker is driven over stdin/stdout with JSON lines: ``{"agents": N}`` sets how many
agents it holds (it only grows), ``{"stop": true}`` ends it; once a second it prints its
counters. Reports are built once per agent and only their changing fields are set per
send: the generator must cost far less than the controller it loads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from dnnscaler.v1 import agent_pb2, agent_pb2_grpc, common_pb2

# Agents per channel (one TCP connection): streams are multiplexed over HTTP/2.
AGENTS_PER_CHANNEL = 100


@dataclass
class Counters:
    sent: int = 0
    updates: int = 0
    send_errors: int = 0
    streams_ended: int = 0
    connected: int = 0
    held: int = 0
    paused: bool = False

    def line(self) -> str:
        return json.dumps(self.__dict__)


@dataclass
class SimAgent:
    """One agent's identity, models and knobs, and its prebuilt report."""

    agent_id: str
    models: list[str]
    rng: random.Random
    report: agent_pb2.Report = field(default_factory=agent_pb2.Report)
    outq: asyncio.Queue[agent_pb2.AgentMessage | None] = field(default_factory=asyncio.Queue)

    def hello(self) -> agent_pb2.AgentMessage:
        h = agent_pb2.Hello(
            agent_id=self.agent_id,
            node=f"scale-node-{self.agent_id}",
            gpu=common_pb2.GpuInfo(index=0, uuid=f"GPU-{self.agent_id}", name="simulated"),
            backend_kind="scale-sim",
            agent_version="scale",
            backend_available=True,
        )
        for name in self.models:
            h.models.append(_state(name))
            mr = self.report.models.add()
            mr.state.CopyFrom(_state(name))
            self._window(mr)
        self.report.backend_available = True
        return agent_pb2.AgentMessage(hello=h)

    def _window(self, mr: agent_pb2.ModelReport) -> None:
        """A plausible window: throughput grows with batch and instances, tail with batch."""
        k = mr.state.knobs
        w = mr.window
        w.window_s = 1.0
        cap = 150.0 * k.instances * (1 + 0.6 * (k.max_batch_size - 1) ** 0.5)
        rps = min(400.0, cap) * (0.95 + 0.1 * self.rng.random())
        w.throughput_rps = rps
        w.completed = int(rps)
        w.latency_mean_ms = 4.0 + 1.5 * k.max_batch_size
        w.latency_p50_ms = w.latency_mean_ms
        w.latency_p95_ms = 1.5 * w.latency_mean_ms
        w.latency_p99_ms = 2.0 * w.latency_mean_ms * (1 + rps / cap)
        w.queue_mean_ms = 0.5
        w.compute_mean_ms = 3.0 + k.max_batch_size
        del w.batch_stats[:]
        w.batch_stats.add(
            batch_size=k.max_batch_size,
            count=max(1, int(rps / k.max_batch_size)),
            compute_ms_mean=w.compute_mean_ms,
        )

    def next_report(self) -> agent_pb2.AgentMessage:
        self.report.seq += 1
        for mr in self.report.models:
            self._window(mr)
        self.report.sent_at_unix_s = time.time()
        return agent_pb2.AgentMessage(report=self.report)

    def apply(self, upd: agent_pb2.KnobUpdate) -> agent_pb2.AgentMessage:
        for mr in self.report.models:
            if mr.state.name == upd.model:
                mr.state.knobs.CopyFrom(upd.knobs)
                mr.state.generation = upd.generation
        return agent_pb2.AgentMessage(
            apply_result=agent_pb2.ApplyResult(
                model=upd.model, generation=upd.generation, ok=True, knobs_in_force=upd.knobs
            )
        )


def _state(name: str) -> agent_pb2.ModelState:
    return agent_pb2.ModelState(
        name=name,
        knobs=common_pb2.Knobs(max_batch_size=1, instances=1, queue_delay_us=0),
        limits=common_pb2.KnobLimits(max_batch_size=32, max_instances=4, max_queue_delay_us=0),
        available=True,
    )


async def _messages(agent: SimAgent) -> AsyncIterator[agent_pb2.AgentMessage]:
    while True:
        msg = await agent.outq.get()
        if msg is None:
            return
        yield msg


async def run_agent(
    agent: SimAgent, stub: agent_pb2_grpc.AgentServiceStub, interval_s: float, c: Counters
) -> None:
    """Hold one stream: hello, then a report every ``interval_s`` on a fixed phase."""
    agent.outq.put_nowait(agent.hello())
    call = stub.Connect(_messages(agent))
    first = True

    async def reader() -> None:
        nonlocal first
        async for msg in call:
            if msg.WhichOneof("kind") == "welcome" and first:
                first = False
                c.connected += 1
            elif msg.WhichOneof("kind") == "knob_update":
                c.updates += 1
                agent.outq.put_nowait(agent.apply(msg.knob_update))

    rd = asyncio.create_task(reader())
    next_t = time.monotonic() + agent.rng.random() * interval_s
    try:
        while not rd.done():
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            next_t += interval_s
            if first or c.paused:
                continue  # no welcome yet, or paused by the driver: nothing to send
            agent.outq.put_nowait(agent.next_report())
            c.sent += 1
        await rd
    except grpc.aio.AioRpcError:
        c.send_errors += 1
    finally:
        c.streams_ended += 1
        if not first:
            c.connected -= 1
        agent.outq.put_nowait(None)
        rd.cancel()
        call.cancel()


async def worker(target: str, prefix: str, models: int, interval_s: float, seed: int) -> None:
    c = Counters()
    channels: list[grpc.aio.Channel] = []
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def tick() -> None:
        while True:
            await asyncio.sleep(1.0)
            print(c.line(), flush=True)

    ticker = asyncio.create_task(tick())
    try:
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd.get("stop"):
                break
            c.paused = bool(cmd.get("pause", False))
            want = int(cmd.get("agents", len(tasks)))
            while len(tasks) < want:
                i = len(tasks)
                if i % AGENTS_PER_CHANNEL == 0:
                    channels.append(grpc.aio.insecure_channel(target))
                stub = agent_pb2_grpc.AgentServiceStub(channels[-1])
                agent = SimAgent(
                    agent_id=f"{prefix}-{i:05d}",
                    models=[f"scale-m{j}" for j in range(models)],
                    rng=random.Random(f"{seed}-{prefix}-{i}"),
                )
                tasks.append(asyncio.create_task(run_agent(agent, stub, interval_s, c)))
                c.held = len(tasks)
                if i % 50 == 49:
                    await asyncio.sleep(0)  # let streams open while the rest are created
    finally:
        ticker.cancel()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await t
        print(c.line(), flush=True)
        for ch in channels:
            await ch.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", required=True, help="controller HOST:PORT")
    p.add_argument("--prefix", required=True, help="agent ids are PREFIX-NNNNN")
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--interval-s", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    asyncio.run(worker(a.target, a.prefix, a.models, a.interval_s, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
