"""Faults around a real agent and a real Triton (#18): the controller killed under load, the
inference server killed and restarted, a stalled, dropped or slow link to the controller,
and a knob apply that fails inside the server.

Real parts: Triton (one per module, restarted on the same ports by the test that kills
it), the controller (a process where it is killed, else in this process over real gRPC),
SQLite. NVML is the only fake. Waits are bounded by deadlines; assertions are on counts
and states, never on how long something took. A failure says what the link, the load
generator and the server went through (the server's log tail comes from conftest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from e2e.processes import Daemon, controller
from link_proxy import LinkProxy
from server_support import read_back

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.backends.triton import TritonBackend
from dnnscaler.agents.config import AgentConfig
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.registry import ModelSettings
from dnnscaler.controller.server import Controller
from dnnscaler.controller.store import StateStore, StoredSettings
from dnnscaler.core.convert import knobs_to_pb
from dnnscaler.core.types import Knobs
from dnnscaler.loadgen import LoadGen
from dnnscaler.triton.install import triton_installed
from dnnscaler.triton.launcher import LocalTriton, free_port
from dnnscaler.v1 import admin_pb2, admin_pb2_grpc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.triton,
    pytest.mark.skipif(not triton_installed(), reason="nvidia-pytriton not installed"),
    pytest.mark.timeout(180),
]

TRITON_DEMO_MODELS = ["echo"]
TRITON_EXTRA_MODELS = ["fragile"]  # loads only with max_batch_size <= 4 (conftest)
TRITON_SAME_PORTS = True  # the server-crash test restarts it where the agent dials
TRITON_TRACE = False  # no tail latency needed; tracing is Triton 2.51's crash source

AGENT = "faulty"
REPORT_S = 0.25
ECHO_DEFAULTS = Knobs(max_batch_size=32, instances=1)  # its config.pbtxt
FRAGILE_GOOD = Knobs(max_batch_size=4, instances=1)
PINNED = Knobs(max_batch_size=4, instances=2)  # differs from echo's defaults

T = TypeVar("T")


def agent_config(controller_address: str, **overrides: Any) -> AgentConfig:
    """Short timeouts so every fault is noticed within a few seconds."""
    base = AgentConfig(
        controller=controller_address,
        agent_id=AGENT,
        report_interval_s=REPORT_S,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        backend_timeout_s=2.0,
        keepalive_s=1.0,
        keepalive_timeout_s=1.0,
        connect_timeout_s=2.0,
        apply_backoff_initial_s=1.0,
    )
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def running_agent(server: LocalTriton, config: AgentConfig) -> AsyncIterator[Agent]:
    backend = TritonBackend(
        server.grpc_url, server.metrics_url, trace_file=None, request_timeout_s=1.0
    )
    agent = Agent(config, backend)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 20)
        await backend.close()


def settings(knobs: Knobs | None = None, paused: bool = False) -> ModelSettings:
    """Static knobs for a model, or (``paused``) a model the test leaves alone."""
    params: dict[str, Any] = {"knobs": knobs} if knobs is not None else {}
    slo = ControllerConfig().default_slo
    return ModelSettings(slo, "static", params, paused)


@contextlib.asynccontextmanager
async def in_process_controller(
    models: dict[str, ModelSettings], **overrides: Any
) -> AsyncIterator[Controller]:
    cfg = ControllerConfig(
        listen="127.0.0.1:0",
        report_interval_s=REPORT_S,
        stale_after_s=3.0,
        default_policy="static",
        grace_s=0.5,
        insecure=True,
    )
    ctl = Controller(replace(cfg, **overrides))
    for model, s in models.items():
        ctl.registry.put_settings(model, s)
    await ctl.start()
    try:
        yield ctl
    finally:
        await ctl.stop()


def infer_once(server: LocalTriton, model: str, width: int) -> tuple[int, ...]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("INPUT0", [1, width], "FP32")
        inp.set_data_from_numpy(np.ones((1, width), dtype=np.float32))
        return tuple(client.infer(model, [inp]).as_numpy("OUTPUT0").shape)
    finally:
        client.close()


async def until(
    what: str,
    probe: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    context: Callable[[], str] = lambda: "",
    timeout_s: float = 30.0,
) -> T:
    """Poll ``probe`` until ``ok``; fail after ``timeout_s`` with the last value seen."""
    last: T | None = None
    for _ in range(int(timeout_s / 0.1)):
        try:
            last = await probe()
        except grpc.aio.AioRpcError:
            last = None
        if last is not None and ok(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"never saw {what} within {timeout_s:g} s; last: {last}\n{context()}")


async def agent_status(
    admin: admin_pb2_grpc.AdminServiceStub,
) -> admin_pb2.AgentStatus | None:
    resp = await admin.ListAgents(admin_pb2.ListAgentsRequest(), timeout=2)
    return next((a for a in resp.agents if a.agent_id == AGENT), None)


async def model_status(
    admin: admin_pb2_grpc.AdminServiceStub, model: str
) -> admin_pb2.ModelStatus | None:
    resp = await admin.ListModels(admin_pb2.ListModelsRequest(model=model), timeout=2)
    return next((m for m in resp.models if m.agent_id == AGENT), None)


def knobs_of(m: admin_pb2.ModelStatus) -> Knobs:
    return Knobs(m.knobs.max_batch_size, m.knobs.instances, m.knobs.queue_delay_us)


def settled_at(want: Knobs) -> Callable[[admin_pb2.ModelStatus | None], bool]:
    return lambda m: m is not None and knobs_of(m) == want and not m.HasField("pending_knobs")


def log_events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                out.append(event)
    return out


# -- 1. kill -9 of the controller under load ------------------------------------------------
async def test_controller_kill9_under_load_keeps_knobs_and_resumes(
    triton_server: LocalTriton, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """The controller dies with no goodbye while clients send: Triton keeps the knobs the
    controller set and fails no request; the agent retries with backoff until a new
    controller is up on the same state database, which carries the loop on from it (no
    knob change, the static pin still in force)."""
    db = tmp_path / "controller.db"
    store = StateStore(db)  # what an operator set earlier: echo pinned, fragile paused
    slo = ControllerConfig().default_slo
    store.save_settings("echo", StoredSettings(slo, "static", {"knobs": PINNED}))
    store.save_settings("fragile", StoredSettings(slo, "static", {}, paused=True))
    store.close()
    address = f"127.0.0.1:{free_port()}"
    args = ("--state-path", str(db), "--policy", "static", "--report-interval-s", str(REPORT_S))
    first: Daemon = controller(tmp_path, address, *args)
    second: Daemon | None = None
    gen: LoadGen | None = None

    def tails() -> str:
        load = gen.error_report() if gen is not None else "load not started"
        daemons = [d.tail() for d in (first, second) if d is not None]
        return "\n".join([f"load: {load}", *daemons])

    try:
        async with (
            running_agent(triton_server, agent_config(address)) as agent,
            grpc.aio.insecure_channel(address) as ch,
        ):
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            before = await until(
                "echo pinned by the first controller",
                lambda: model_status(admin, "echo"),
                settled_at(PINNED),
                tails,
                timeout_s=60,
            )
            assert await asyncio.to_thread(read_back, triton_server, "echo") == PINNED
            async with LoadGen(
                triton_server.grpc_url, "echo", rate_rps=40, seed=1, request_timeout_s=10
            ) as gen:
                await asyncio.sleep(1.0)
                first.kill9()
                await until("the agent noticing", _async(lambda: agent), _disconnected, tails)
                await until(
                    "the agent retrying with backoff",
                    _async(lambda: agent.connect_failures),
                    lambda n: n >= 2,
                    tails,
                )
                # Fail-static: nobody controls Triton now, and it keeps the knobs.
                assert await asyncio.to_thread(read_back, triton_server, "echo") == PINNED
                second = controller(tmp_path, address, *args, name="controller-2")
                await until(
                    "the agent back on the new controller",
                    lambda: agent_status(admin),
                    lambda a: a is not None and a.connected and a.reports >= 8,
                    tails,
                    timeout_s=60,
                )
                after = await model_status(admin, "echo")
                await asyncio.sleep(0.5)
            load = gen.snapshot()
        record_property("requests", load.sent)
        record_property("failed_requests", load.errors)
        record_property("reconnect_attempts_failed", agent.connect_failures)
        assert load.errors == 0, f"{load.errors} of {load.sent} failed: {tails()}"
        assert load.sent >= 40, tails()
        assert agent.sessions == 2, tails()
        assert after is not None, tails()
        # Control resumed from the stored loop: same knobs, no new update, generation on.
        assert knobs_of(after) == PINNED and after.knob_changes == 0, (after, tails())
        assert after.generation >= before.generation, tails()
        assert after.policy == "static", tails()
        resumes = {e["model"]: e["outcome"] for e in log_events(second.log, "loop_resume")}
        assert resumes.get("echo") == "resumed", (resumes, tails())
        assert await asyncio.to_thread(read_back, triton_server, "echo") == PINNED
    finally:
        for d in (first, second):
            if d is not None:
                d.stop()


def _async(fn: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return fn()

    return probe


def _disconnected(agent: Agent) -> bool:
    return not agent.connected.is_set()


# -- 2. the inference server crashes and restarts --------------------------------------------
async def test_triton_kill9_and_restart_gets_the_desired_knobs_back(
    triton_server: LocalTriton, record_property: Callable[[str, object], None]
) -> None:
    """Triton is killed and started again on the same repository, whose config.pbtxt has
    echo's defaults, not the knobs the controller set. The controller's status says the
    backend was unavailable; once it is back the agent sets the controller's knobs again
    by itself (the model is paused on the controller, so no new update is sent)."""
    repo_config = (triton_server.model_repo / "echo" / "config.pbtxt").read_text()
    assert f"max_batch_size: {ECHO_DEFAULTS.max_batch_size}" in repo_config
    models = {"echo": settings(PINNED), "fragile": settings(paused=True)}
    async with in_process_controller(models) as ctl:
        async with (
            running_agent(triton_server, agent_config(ctl.address)) as agent,
            grpc.aio.insecure_channel(ctl.address) as ch,
        ):
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            ctx = lambda: f"agent reconciles {agent.reconciles}"  # noqa: E731
            await until("echo pinned", lambda: model_status(admin, "echo"), settled_at(PINNED))
            await admin.Pause(admin_pb2.PauseRequest(model="echo"), timeout=5)
            before = await model_status(admin, "echo")
            assert before is not None
            assert triton_server.pid is not None
            os.kill(triton_server.pid, signal.SIGKILL)
            down = await until(
                "the backend reported unavailable",
                lambda: agent_status(admin),
                lambda a: a is not None and not a.backend_available,
                ctx,
            )
            assert down.connected and down.backend_message
            await asyncio.to_thread(triton_server.stop)  # reap it, free its ports and shm
            await triton_server.start_async()
            await until(
                "the pinned knobs back in Triton",
                lambda: asyncio.to_thread(read_back, triton_server, "echo"),
                lambda k: k == PINNED,
                ctx,
            )
            back = await until(
                "the controller seeing them",
                lambda: model_status(admin, "echo"),
                lambda m: m is not None and m.available and knobs_of(m) == PINNED,
                ctx,
            )
            status = await agent_status(admin)
        record_property("reconciles", agent.reconciles)
        assert status is not None and status.backend_available
        assert agent.reconciles >= 1  # the agent found the defaults and set PINNED again
        # The controller sent nothing: the agent's own reconcile did it.
        assert (back.knob_changes, back.generation) == (before.knob_changes, before.generation)
        assert back.hold == "model paused"
        assert await asyncio.to_thread(infer_once, triton_server, "echo", 16) == (1, 16)


# -- 3. a slow, stalled or dropped link --------------------------------------------------------
async def test_slow_stalled_and_dropped_link_to_the_controller(
    triton_server: LocalTriton, record_property: Callable[[str, object], None]
) -> None:
    """Through a proxy of our own: with a slow link control goes on (a knob change lands);
    a stalled link (bytes held, connections open) is found by the keepalives and the
    controller's staleness check, the agent keeps trying (each attempt bounded by its
    connect timeout) and reconnects when bytes flow; a dropped link is reconnected."""
    wanted = Knobs(max_batch_size=2, instances=1)
    models = {"echo": settings(ECHO_DEFAULTS), "fragile": settings(paused=True)}
    async with (
        in_process_controller(models, stale_after_s=2.0) as ctl,
        LinkProxy(ctl.address) as proxy,
        running_agent(triton_server, agent_config(proxy.address)) as agent,
        grpc.aio.insecure_channel(ctl.address) as ch,
    ):
        admin = admin_pb2_grpc.AdminServiceStub(ch)
        ctx = lambda: f"link {proxy.counts}, agent sessions {agent.sessions}"  # noqa: E731
        await until("the agent connected", lambda: agent_status(admin), _connected, ctx)

        # Slow: every chunk held 100 ms each way. A knob change still lands.
        proxy.delay_s = 0.1
        await admin.SetPolicy(
            admin_pb2.SetPolicyRequest(model="echo", policy="static", knobs=knobs_to_pb(wanted)),
            timeout=5,
        )
        await until(
            "the change over a slow link",
            lambda: model_status(admin, "echo"),
            settled_at(wanted),
            ctx,
        )
        assert await asyncio.to_thread(read_back, triton_server, "echo") == wanted
        slow = await agent_status(admin)
        assert slow is not None and slow.connected
        assert agent.sessions == 1, ctx()  # slow is not broken
        proxy.delay_s = 0.0

        # Stalled: the keepalive breaks the agent's stream; the controller drops it.
        failures = agent.connect_failures
        proxy.stall()
        await until("the agent noticing", _async(lambda: agent), _disconnected, ctx)
        await until(
            "the controller dropping the agent",
            lambda: agent_status(admin),
            lambda a: a is None or not a.connected,
            ctx,
        )
        await until(  # each attempt over the stalled link is given up, not stuck
            "reconnect attempts failing",
            _async(lambda: agent.connect_failures),
            lambda n: n >= failures + 2,
            ctx,
        )
        proxy.flow()
        await until("the agent back", lambda: agent_status(admin), _connected, ctx)
        # The controller lists the stream before its welcome has crossed the proxy back to
        # the agent, which counts a session only on that welcome: wait for both ends.
        await until("the agent's welcome", _async(lambda: agent.sessions), lambda n: n >= 2, ctx)
        assert agent.sessions == 2, ctx()

        # Dropped: every connection reset; the agent reconnects.
        assert proxy.drop() >= 1
        await until(
            "a new session after the drop",
            _async(lambda: agent.sessions),
            lambda n: n == 3,
            ctx,
        )
        await until("the agent back", lambda: agent_status(admin), _connected, ctx)
        # Control works on the new session.
        await admin.SetPolicy(
            admin_pb2.SetPolicyRequest(
                model="echo", policy="static", knobs=knobs_to_pb(ECHO_DEFAULTS)
            ),
            timeout=5,
        )
        await until(
            "a change after it",
            lambda: model_status(admin, "echo"),
            settled_at(ECHO_DEFAULTS),
            ctx,
        )
        record_property("link", str(proxy.counts))
        record_property("reconnect_attempts_failed", agent.connect_failures)


def _connected(a: admin_pb2.AgentStatus | None) -> bool:
    return a is not None and a.connected


# -- 4. a knob apply that fails inside the server ------------------------------------------------
WINDOWS = 48  # reports watched once knobs that fail are pinned (12 s at REPORT_S)
# What may reach Triton meanwhile: asked again 2 s, then 4 s, then 8 s after each failure,
# so a 4th load cannot start within 14 s (plus three loads) of the first; without the
# backoffs 6 reached it in those windows.
MAX_ATTEMPTS = 3


async def test_failed_apply_rolls_back_and_backs_off(
    triton_server: LocalTriton, record_property: Callable[[str, object], None]
) -> None:
    """The controller pins ``fragile`` to a batch its initialize() refuses: Triton starts
    the new config and fails it halfway; the old config keeps serving (no failed request).
    The policy keeps wanting those knobs at every report; the controller asks again, and
    the agent tries again, only after a backoff doubling per failure, so over a fixed
    number of windows only a few loads reach Triton (without the backoffs, one per 1-2
    windows). The reload itself: test_triton_backend's test_failed_reload_keeps_the_old_config."""
    bad = Knobs(max_batch_size=8, instances=1)  # within the declared limits (16)
    models = {"echo": settings(paused=True), "fragile": settings(FRAGILE_GOOD)}
    async with in_process_controller(models, apply_timeout_s=30.0) as ctl:
        async with (
            running_agent(triton_server, agent_config(ctl.address)) as agent,
            grpc.aio.insecure_channel(ctl.address) as ch,
            LoadGen(triton_server.grpc_url, "fragile", rate_rps=20, seed=2) as gen,
        ):
            admin = admin_pb2_grpc.AdminServiceStub(ch)

            def ctx() -> str:
                return (
                    f"attempts {agent.apply_attempts}, held back {agent.held_back};"
                    f" load {gen.error_report()}"
                )

            await until(
                "fragile known",
                lambda: model_status(admin, "fragile"),
                settled_at(FRAGILE_GOOD),
                ctx,
            )
            attempts0 = agent.apply_attempts
            start = await agent_status(admin)
            assert start is not None
            await admin.SetPolicy(
                admin_pb2.SetPolicyRequest(
                    model="fragile", policy="static", knobs=knobs_to_pb(bad)
                ),
                timeout=5,
            )
            await until(
                f"{WINDOWS} reports with the failing knobs pinned",
                lambda: agent_status(admin),
                lambda a: a is not None and a.reports >= start.reports + WINDOWS,
                ctx,
                timeout_s=60,
            )
            m = await model_status(admin, "fragile")
            attempts = agent.apply_attempts - attempts0
        load = gen.snapshot()
        assert m is not None
        record_property("updates", m.knob_changes)
        record_property("apply_attempts", attempts)
        record_property("held_back", agent.held_back)
        assert 1 <= attempts <= MAX_ATTEMPTS, ctx()
        # The controller asked about as often as Triton was tried, not at every report.
        assert m.knob_changes <= MAX_ATTEMPTS + 1, (m.knob_changes, ctx())
        assert "held back" in m.last_error or "load failed" in m.last_error, m.last_error
        # Rolled back: the last good config serves, and no request failed.
        assert await asyncio.to_thread(read_back, triton_server, "fragile") == FRAGILE_GOOD
        assert await asyncio.to_thread(infer_once, triton_server, "fragile", 4) == (1, 4)
        assert load.errors == 0, ctx()
        assert load.sent > 0
