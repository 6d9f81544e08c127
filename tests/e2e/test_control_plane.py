"""End to end over real gRPC on loopback: controller + sim agents."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.v1 import admin_pb2, common_pb2

from .conftest import wait_for

pytestmark = pytest.mark.timeout(120)


async def test_reflection_lists_admin_and_agent_services(controller: Controller) -> None:
    def list_services() -> list[str]:
        with grpc.insecure_channel(controller.address) as ch:
            return list(ProtoReflectionDescriptorDatabase(ch).get_services())

    services = await asyncio.to_thread(list_services)
    assert "dnnscaler.v1.AdminService" in services
    assert "dnnscaler.v1.AgentService" in services
    assert "grpc.health.v1.Health" in services


async def test_aimd_moves_knobs_and_slo_holds(controller, admin, start_agent) -> None:
    # Two agents, different profiles: a batching-friendly and a light network.
    a1 = await start_agent(
        controller.address, "node-a-gpu0", {"inception": ("imagenet/Inc-V1", 60.0)}
    )
    a2 = await start_agent(
        controller.address, "node-b-gpu0", {"mobilenet": ("caltech/Mob-V2-1", 80.0)}, seed=1
    )
    await wait_for(lambda: len(controller.registry.agents) == 2)
    for model, lat in (("inception", 60.0), ("mobilenet", 40.0)):
        resp = await admin.SetSlo(
            admin_pb2.SetSloRequest(model=model, slo=common_pb2.Slo(percentile=95, latency_ms=lat))
        )
        assert resp.models[0].slo.latency_ms == lat

    async def batch_of(model: str) -> int:
        m = await admin.GetModel(admin_pb2.GetModelRequest(model=model))
        return m.knobs.max_batch_size

    # AIMD raises the batch size while latency is below the SLO band.
    for model in ("inception", "mobilenet"):
        await wait_for(lambda model=model: batch_of(model), timeout_s=5)

    async def grown() -> bool:
        return await batch_of("inception") > 1 and await batch_of("mobilenet") > 1

    await wait_for(grown, timeout_s=30)
    # Knobs really reached the sim servers (read back from the backends, not the controller).
    assert (await a1.backend.list_models())[0].knobs.max_batch_size > 1
    assert (await a2.backend.list_models())[0].knobs.max_batch_size > 1

    # Steady state: over the last windows the p95 stays within the SLO (median of windows).
    await asyncio.sleep(8)
    for model, slo_ms in (("inception", 60.0), ("mobilenet", 40.0)):
        samples = []
        for _ in range(8):
            m = await admin.GetModel(admin_pb2.GetModelRequest(model=model))
            if m.last_window.HasField("latency_p95_ms"):
                samples.append(m.last_window.latency_p95_ms)
            await asyncio.sleep(0.5)
        samples.sort()
        assert samples, f"{model}: no latency reported"
        assert samples[len(samples) // 2] <= slo_ms, (model, samples)


async def test_aimd_backs_off_when_slo_tightened(controller, admin, start_agent) -> None:
    from dnnscaler.core.types import Knobs

    await start_agent(
        controller.address,
        "node-a-gpu0",
        {"inception": ("imagenet/Inc-V1", 100.0)},
        knobs=Knobs(max_batch_size=64, instances=1, queue_delay_us=0),
    )
    await wait_for(lambda: controller.registry.known_model("inception"))
    await admin.SetSlo(
        admin_pb2.SetSloRequest(
            model="inception", slo=common_pb2.Slo(percentile=95, latency_ms=12.0)
        )
    )

    async def shrunk() -> bool:
        m = await admin.GetModel(admin_pb2.GetModelRequest(model="inception"))
        return m.knobs.max_batch_size < 64

    await wait_for(shrunk, timeout_s=30)


async def test_controller_restart_agents_reconnect_and_servers_keep_knobs(
    controller_config: ControllerConfig, start_agent
) -> None:
    c1 = Controller(controller_config)
    await c1.start()
    port = c1.port
    ra = await start_agent(c1.address, "node-a-gpu0", {"inception": ("imagenet/Inc-V1", 60.0)})
    await wait_for(lambda: ra.agent.sessions == 1)

    async def batch_now() -> int:
        return (await ra.backend.list_models())[0].knobs.max_batch_size

    await wait_for(lambda: _gt1(batch_now()), timeout_s=30)
    await c1.stop()
    await wait_for(lambda: not ra.agent.connected.is_set(), timeout_s=10)
    kept = (await ra.backend.list_models())[0].knobs
    await asyncio.sleep(2.0)  # controller away: fail-static, the server keeps its config
    assert (await ra.backend.list_models())[0].knobs == kept

    cfg2 = ControllerConfig(**{**controller_config.__dict__, "listen": f"127.0.0.1:{port}"})
    c2 = Controller(cfg2)
    await c2.start()
    try:
        await wait_for(lambda: ra.agent.sessions == 2, timeout_s=20)
        await wait_for(lambda: c2.registry.known_model("inception"))
        loop = c2.registry.loops_for("inception")[0]
        assert loop.knobs.max_batch_size == kept.max_batch_size
        assert loop.generation >= 1  # learnt from the agent's report, not reset
    finally:
        await c2.stop()


async def _gt1(v: object) -> bool:
    return (await v) > 1  # type: ignore[misc]


async def test_agent_started_before_controller_connects_with_backoff(
    controller_config: ControllerConfig, start_agent
) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ra = await start_agent(f"127.0.0.1:{port}", "early", {"m": ("imagenet/Inc-V1", 50.0)})
    await asyncio.sleep(1.5)
    assert ra.agent.sessions == 0
    c = Controller(
        ControllerConfig(**{**controller_config.__dict__, "listen": f"127.0.0.1:{port}"})
    )
    await c.start()
    try:
        await wait_for(lambda: ra.agent.sessions == 1, timeout_s=20)
        await wait_for(lambda: c.registry.known_model("m"))
    finally:
        await c.stop()


async def test_stale_agent_is_marked_lost_and_its_models_kept(controller, start_agent) -> None:
    """A silent agent is lost, not forgotten: its record and model loops stay for its
    return (#18; tests/e2e/test_agent_kill9.py covers the return)."""
    ra = await start_agent(controller.address, "goner", {"m": ("imagenet/Inc-V1", 50.0)})
    await wait_for(lambda: "m" in getattr(controller.registry.agents.get("goner"), "models", {}))
    loop = controller.registry.agents["goner"].models["m"]
    await ra.stop()
    await wait_for(lambda: controller.registry.agents["goner"].lost, timeout_s=15)
    rec = controller.registry.agents["goner"]
    assert not rec.connected and rec.models["m"] is loop and not loop.available
