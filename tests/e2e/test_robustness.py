"""The controller survives malformed agent traffic: it logs and continues, and keeps
controlling well-behaved agents."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)


async def _raw_stream(address: str, msgs: list[agent_pb2.AgentMessage]) -> list[str]:
    """Send ``msgs`` on a raw stream, return the kinds of the controller's answers."""

    async def gen():
        for m in msgs:
            yield m
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

    kinds = []
    async with grpc.aio.insecure_channel(address) as ch:
        call = agent_pb2_grpc.AgentServiceStub(ch).Connect(gen())
        try:
            async for m in call:
                kinds.append(m.WhichOneof("kind"))
        except grpc.aio.AioRpcError as e:
            kinds.append(e.code().name)
    return kinds


async def test_first_message_must_be_hello(controller) -> None:
    kinds = await _raw_stream(
        controller.address, [agent_pb2.AgentMessage(report=agent_pb2.Report())]
    )
    assert kinds == ["FAILED_PRECONDITION"]


async def test_hello_without_id_is_invalid(controller) -> None:
    kinds = await _raw_stream(controller.address, [agent_pb2.AgentMessage(hello=agent_pb2.Hello())])
    assert kinds == ["INVALID_ARGUMENT"]


async def test_garbage_reports_do_not_hurt_other_agents(controller, admin, start_agent) -> None:
    good = await start_agent(controller.address, "good", {"inception": ("imagenet/Inc-V1", 50.0)})
    await wait_for(lambda: controller.registry.known_model("inception"))
    nan = math.nan
    bad_state = agent_pb2.ModelState(
        name="weird",
        knobs=common_pb2.Knobs(max_batch_size=0, instances=0),
        limits=common_pb2.KnobLimits(max_batch_size=1, max_instances=1),
        available=True,
    )
    bad_window = common_pb2.WindowStats(
        window_s=-1, completed=5, throughput_rps=nan, latency_p99_ms=nan, latency_p95_ms=-4
    )
    bad_window.batch_stats.add(batch_size=0, count=3, compute_ms_mean=nan)
    msgs = [
        agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id="evil", models=[bad_state])),
        agent_pb2.AgentMessage(
            report=agent_pb2.Report(
                models=[agent_pb2.ModelReport(state=bad_state, window=bad_window)]
            )
        ),
        agent_pb2.AgentMessage(
            apply_result=agent_pb2.ApplyResult(model="nope", generation=99, ok=False)
        ),
        agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id="evil")),
        agent_pb2.AgentMessage(
            report=agent_pb2.Report(
                models=[agent_pb2.ModelReport(state=bad_state, window=bad_window)]
            )
        ),
    ]
    kinds = await _raw_stream(controller.address, msgs)
    assert kinds[0] == "welcome"
    # The controller still answers and still controls the good agent.
    resp = await admin.ListAgents(admin_pb2.ListAgentsRequest())
    assert "good" in [a.agent_id for a in resp.agents]
    await admin.SetSlo(
        admin_pb2.SetSloRequest(model="inception", slo=common_pb2.Slo(percentile=95, latency_ms=80))
    )

    async def grown() -> bool:
        return (await good.backend.list_models())[0].knobs.max_batch_size > 1

    await wait_for(grown, timeout_s=30)
