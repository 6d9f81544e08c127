"""Fixtures for end-to-end tests: a real controller and real agents over real gRPC on
loopback, with simulated GPUs (the only fake: this box has no GPU)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.backends.sim import SimBackend, SimModelSpec
from dnnscaler.agents.config import AgentConfig
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.core.types import Knobs
from dnnscaler.sim.profile import shipped_profiles
from dnnscaler.v1 import admin_pb2_grpc


class RunningAgent:
    def __init__(self, agent: Agent, backend: SimBackend, task: asyncio.Task[None]) -> None:
        self.agent = agent
        self.backend = backend
        self.task = task

    async def stop(self) -> None:
        self.agent.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 10)
        await self.backend.close()


@pytest.fixture
def controller_config() -> ControllerConfig:
    return ControllerConfig(
        listen="127.0.0.1:0",
        report_interval_s=0.5,
        stale_after_s=3.0,
        default_policy="aimd",
        grace_s=0.5,
        insecure=True,
    )


@pytest.fixture
async def controller(controller_config: ControllerConfig) -> AsyncIterator[Controller]:
    c = Controller(controller_config)
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def admin(controller: Controller) -> AsyncIterator[admin_pb2_grpc.AdminServiceStub]:
    async with grpc.aio.insecure_channel(controller.address) as ch:
        yield admin_pb2_grpc.AdminServiceStub(ch)


@pytest.fixture
async def start_agent() -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningAgent] = []

    async def _start(
        address: str,
        agent_id: str,
        models: dict[str, tuple[str, float]],
        seed: int = 0,
        knobs: Knobs | None = None,
    ) -> RunningAgent:
        profiles = shipped_profiles()
        specs = {
            name: SimModelSpec(profile=profiles[prof], knobs=knobs or Knobs(), rate_rps=rate)
            for name, (prof, rate) in models.items()
        }
        backend = SimBackend(specs, seed=seed)
        agent = Agent(
            AgentConfig(
                controller=address, agent_id=agent_id, backoff_initial_s=0.1, backoff_max_s=0.5
            ),
            backend,
        )
        ra = RunningAgent(agent, backend, asyncio.create_task(agent.run()))
        started.append(ra)
        return ra

    yield _start
    for ra in started:
        await ra.stop()


async def wait_for(pred: Callable[[], Any], timeout_s: float = 20.0, every_s: float = 0.1) -> Any:
    """Poll ``pred`` (sync or async) until truthy; fail the test on timeout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if loop.time() > end:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(every_s)
