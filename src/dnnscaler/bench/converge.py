"""Where the real controller and agent take a model at a fixed offered rate: the
convergence test's measurement (``converge``), with the policy's moves and the host's load
kept to explain a verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.config import AgentConfig
from dnnscaler.bench.adapter import H, ServerAdapter
from dnnscaler.bench.host_load import HostLoad, HostMeter
from dnnscaler.bench.probes import apply_settled, model_info
from dnnscaler.bench.retries import STALL_WINDOWS, ServerStalled
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.core.types import Knobs, Slo
from dnnscaler.policies.decision_trace import Trace
from dnnscaler.policies.dnnscaler_policy import DnnScalerState, plan_summary


@dataclass(frozen=True)
class Converged:
    """Where a ``converge`` run ended, and how it got there."""

    knobs: Knobs
    errors: int
    # One line per decision that moved the knobs: "t=<s> <reason>" (the policy's words).
    moves: tuple[str, ...] = ()
    # The ``dnnscaler`` policy's last plan and measured floors/ceilings ("" for others).
    plan: str = ""
    # The most CPU the rest of the host took in one window (``host_load``; None: not
    # measurable here). A burst of a second or two breaks a window's tail, and the policy
    # reads it as the config's.
    host_peak: HostLoad | None = None
    # The failed client requests: when (seconds since the load started), and why.
    error_log: str = ""
    # Control windows run, and whether the knobs were held ``settle_windows`` at the end.
    windows: int = 0
    settled: bool = True
    # Set when every failed request was the server's own defect (``known_defects``), not a
    # failed apply.
    upstream_defect: str | None = None
    # Every decision's observation and answer (``decision_trace``): a miss, replayed offline.
    trace: Trace | None = None


def _fmt(k: Knobs) -> str:
    return f"b{k.max_batch_size} n{k.instances}" + (
        f" d{k.queue_delay_us}us" if k.queue_delay_us else ""
    )


SETTLE_S = 90.0  # how long ``converge`` waits for the controller's last change to land


def _controller_target(controller: Controller, model: str) -> Knobs | None:
    """The knobs the controller last chose for ``model`` (sent, maybe not yet in force)."""
    loops = controller.registry.loops_for(model)
    if not loops:
        return None
    loop = loops[0]
    if loop.pending is not None:
        return loop.pending.knobs
    state = loop.policy_state
    if isinstance(state, DnnScalerState):
        return state.target  # confirmed by a report while its reload still runs
    return loop.knobs


async def converge(
    adapter: ServerAdapter[H],
    server: H,
    model: str,
    policy: str,
    start_knobs: Knobs,
    slo: Slo,
    rate_rps: float,
    windows: int,
    window_s: float = 1.0,
    settle_windows: int = 0,
    max_windows: int | None = None,
) -> Converged:
    """Run ``policy`` through the real controller and agent at a fixed open-loop rate for
    ``windows`` control windows; return the knobs in force at the end, the client errors and
    the policy's moves. With ``settle_windows``, it runs on (up to ``max_windows``) until
    the policy has decided that many windows on the knobs in force: a move made in the last
    window is a decision, not yet a converged config (12-05 CI run 11: ``wide_mlp`` moved b4
    n2 -> b4 n3 in window 30 of 30, and b4 n3 was judged without the policy ever seeing it
    run). Decisions, not wall-clock windows: a reload takes up to ~12 s on 2 cores, and the
    policy decides nothing meanwhile (12-07: ``resnet_small``'s b32 n2, in force at t=28 of
    a move at t=16, was judged after three decisions, the first "measuring").
    Raises ``ServerStalled`` as soon as the server completes nothing for ``STALL_WINDOWS``."""
    await apply_settled(server, model, start_knobs)
    controller = Controller(
        ControllerConfig(
            listen="127.0.0.1:0",
            report_interval_s=window_s,
            default_policy=policy,
            default_slo_ms=slo.latency_ms,
            default_percentile=slo.percentile,
            grace_s=0.5,
            insecure=True,  # one host: the benchmark's own loopback
        ),
        trace_decisions=True,
    )
    await controller.start()
    backend = adapter.make_backend(server)
    agent = Agent(AgentConfig(controller=controller.address, agent_id=f"converge-{model}"), backend)
    task = asyncio.create_task(agent.run())
    try:
        await agent.connected.wait()
        moves: list[str] = []
        changes = 0
        t0 = time.monotonic()
        async with adapter.load_gen(
            server, model, rate_rps=rate_rps, seed=7, max_duration_s=600
        ) as gen:
            idle = 0
            decided = 0
            meter = HostMeter()
            peak: HostLoad | None = None
            held = 0  # decisions on the knobs in force since the last move
            limit = max(windows, max_windows or 0)
            i = 0
            while i < windows or (i < limit and held < settle_windows):
                i += 1
                await asyncio.sleep(window_s)
                load = meter.read()
                if load is not None and (peak is None or load.total_cpus > peak.total_cpus):
                    peak = load
                loop = controller.registry.loops_for(model)
                if loop:
                    held = loop[0].decisions - decided
                if loop and loop[0].knob_changes > changes:
                    # Read once a window: two changes in one window show as one line, so
                    # the line says how many and where the knobs are headed (CI run 40
                    # recorded one move and ended on knobs that move did not name).
                    n = loop[0].knob_changes - changes
                    changes = loop[0].knob_changes
                    decided, held = loop[0].decisions, 0
                    target = _controller_target(controller, model)
                    head = f"t={time.monotonic() - t0:.0f}" + (f" ({n} changes)" if n > 1 else "")
                    to = f" -> {_fmt(target)}" if target is not None else ""
                    moves.append(f"{head} {loop[0].last_reason}{to}")
                idle = idle + 1 if gen.window().completed == 0 else 0
                if idle >= STALL_WINDOWS:  # a hung server: say so now, not after the run
                    raise ServerStalled(
                        f"{model}: no request completed for {idle} windows at {rate_rps:.0f} rps"
                    )
            snap = gen.snapshot()
            errors = snap.errors
            error_log = gen.error_report()
            defect = adapter.upstream_defect(gen)
            if errors:
                error_log += (
                    f"; offered {rate_rps:.0f} rps, sent {snap.offered_rps:.0f}/s, completed"
                    f" {snap.throughput_rps:.0f}/s; policy moves: {' | '.join(moves) or 'none'}"
                )
        # Let an update sent in the last windows land before reading the result: a reload
        # started near the end can take ~10 s on 2 cores (12-03 in CI: the test read b4 n2
        # while b4 n3 was loading, and its ladder probed the reload).
        await asyncio.sleep(2 * window_s)
        end = time.monotonic() + SETTLE_S
        while True:
            knobs = (await model_info(server.setup, model)).knobs
            target = _controller_target(controller, model)
            if target is None or knobs == target or time.monotonic() > end:
                break
            await asyncio.sleep(0.25)
        loops = controller.registry.loops_for(model)
        state = loops[0].policy_state if loops else None
        plan = plan_summary(state) if isinstance(state, DnnScalerState) else ""
        recorder = loops[0].trace if loops else None
        trace = recorder.trace() if recorder is not None else None
    finally:
        agent.stop()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(task, 15)
        await backend.close()
        await controller.stop()
    settled = held >= settle_windows
    return Converged(knobs, errors, tuple(moves), plan, peak, error_log, i, settled, defect, trace)
