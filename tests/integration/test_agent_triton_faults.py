"""A real controller and agent over gRPC, against a real Triton that is down when the agent
starts, then comes up, then hangs (SIGSTOP: alive, but answering nothing), then resumes.

Through all of it the agent stays connected and the controller's status says why the
backend is unavailable; a hung server must not make the agent look dead (before the
bounded observation, each report waited out every call's deadline and retries, and the
controller dropped the agent as stale).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.backends.triton import TritonBackend
from dnnscaler.agents.config import AgentConfig
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.triton.demo_models import write_repository
from dnnscaler.triton.install import triton_installed
from dnnscaler.triton.launcher import LocalTriton, free_port
from dnnscaler.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.triton,
    pytest.mark.skipif(not triton_installed(), reason="nvidia-pytriton not installed"),
]

STALE_AFTER_S = 3.0


async def _agent_status(admin: admin_pb2_grpc.AdminServiceStub) -> admin_pb2.AgentStatus | None:
    resp = await admin.ListAgents(admin_pb2.ListAgentsRequest())
    return next((a for a in resp.agents if a.agent_id == "faulty"), None)


async def _until(
    admin: admin_pb2_grpc.AdminServiceStub,
    what: str,
    ok: Callable[[admin_pb2.AgentStatus], bool],
    timeout_s: float = 90.0,
) -> admin_pb2.AgentStatus:
    last = None
    for _ in range(int(timeout_s / 0.25)):
        last = await _agent_status(admin)
        if last is not None and ok(last):
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"never saw {what}; last status: {last}")


async def test_agent_reports_a_down_then_hung_triton_and_recovers(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_repository(repo, ["echo"])
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    controller = Controller(
        ControllerConfig(
            listen="127.0.0.1:0",
            report_interval_s=0.5,
            stale_after_s=STALE_AFTER_S,
            default_policy="static",
            grace_s=0.5,
            insecure=True,
        )
    )
    await controller.start()
    backend = TritonBackend(
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{metrics_port}/metrics",
        request_timeout_s=1.0,
    )
    agent = Agent(
        AgentConfig(
            controller=controller.address,
            agent_id="faulty",
            report_interval_s=0.5,
            backoff_initial_s=0.2,
            backoff_max_s=1.0,
            backend_timeout_s=1.5,
        ),
        backend,
    )
    task = asyncio.create_task(agent.run())
    server: LocalTriton | None = None
    try:
        async with grpc.aio.insecure_channel(controller.address) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            # 1. Triton down at agent start: connected, backend unavailable, and why.
            down = await _until(
                admin, "the agent connected with the backend down", lambda a: a.connected
            )
            assert not down.backend_available
            assert str(grpc_port) in down.backend_message

            # 2. Triton comes up on that port: the agent finds it and its model.
            server = LocalTriton(
                repo,
                ["echo"],
                grpc_port=grpc_port,
                http_port=http_port,
                metrics_port=metrics_port,
                workdir=tmp_path / "triton",
                exit_timeout_s=3,
            )
            await server.start_async()
            await _until(
                admin,
                "the backend available with its model",
                lambda a: a.backend_available and list(a.models) == ["echo"],
            )
            # Let the static policy's first change land before the hang.
            for _ in range(240):
                models = (await admin.ListModels(admin_pb2.ListModelsRequest())).models
                if models and not models[0].HasField("pending_knobs"):
                    break
                await asyncio.sleep(0.25)

            # 3. Triton hangs: still connected, reporting, and saying the backend hangs.
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            hung = await _until(
                admin,
                "the backend reported as not answering",
                lambda a: not a.backend_available and "not answering" in a.backend_message,
            )
            reports = hung.reports
            await asyncio.sleep(2 * STALE_AFTER_S)  # longer than the controller waits
            still = await _agent_status(admin)
            assert still is not None and still.connected, "agent dropped while Triton hung"
            assert still.reports > reports, "agent stopped reporting while Triton hung"
            assert not still.backend_available

            # 4. Triton resumes: the backend is available again with its model.
            os.kill(server.pid, signal.SIGCONT)
            back = await _until(
                admin,
                "the backend available again",
                lambda a: a.backend_available and list(a.models) == ["echo"],
            )
            assert back.connected
    finally:
        if server is not None and server.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGCONT)
        agent.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 30)
        await backend.close()
        if server is not None:
            await asyncio.to_thread(server.stop)
        await controller.stop()
    assert server is not None and not server.group_alive()
