"""One policy on the staircase: the real controller and agent in this process, over
loopback gRPC, driving a real local server while the offered rate climbs in steps of the
oracle's capacity. Its windows are the online figures of the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.config import AgentConfig
from dnnscaler.bench import metrics as m
from dnnscaler.bench.adapter import H, ServerAdapter
from dnnscaler.bench.config import BenchConfig
from dnnscaler.bench.online import WindowRecord
from dnnscaler.bench.probes import PROBE_IN_FLIGHT, apply_settled, probe_in_flight
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.core.types import Knobs, Slo

if TYPE_CHECKING:
    from dnnscaler.loadgen.generator import LoadGen
    from dnnscaler.loadgen.stats import LoadWindow


@dataclass
class OnlineRun:
    policy: str
    windows: list[WindowRecord]
    latencies: list[np.ndarray]
    steps: list[m.StepResult]
    knob_changes: int
    failed_requests: int
    approach: str
    final_knobs: Knobs
    failed_request_log: str = ""
    # Set when every failed request was the server's own defect (``known_defects``): a run
    # to repeat.
    upstream_defect: str | None = None


async def run_staircase(
    adapter: ServerAdapter[H],
    server: H,
    model: str,
    policy: str,
    start_knobs: Knobs,
    slo: Slo,
    capacity_rps: float,
    cfg: BenchConfig,
    static_knobs: Knobs | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> OnlineRun:
    """One policy on the staircase, with the real controller and agent over loopback."""
    await apply_settled(server, model, start_knobs)
    ctl_policy = "static" if static_knobs is not None else policy
    controller = Controller(
        ControllerConfig(
            listen="127.0.0.1:0",
            report_interval_s=cfg.window_s,
            default_policy=ctl_policy,
            default_slo_ms=slo.latency_ms,
            default_percentile=slo.percentile,
            grace_s=0.5,
            insecure=True,  # one host: the benchmark's own loopback
        )
    )
    await controller.start()
    if static_knobs is not None:
        controller.registry.edit_settings(model).policy_params = {"knobs": static_knobs}
    backend = adapter.make_backend(server)
    agent = Agent(AgentConfig(controller=controller.address, agent_id=f"bench-{policy}"), backend)
    task = asyncio.create_task(agent.run())
    st = cfg.staircase
    windows: list[WindowRecord] = []
    lats: list[np.ndarray] = []
    steps: list[m.StepResult] = []
    failed = 0
    error_log = ""
    defect: str | None = None
    try:
        await agent.connected.wait()
        async with adapter.load_gen(
            server,
            model,
            rate_rps=st.rate(capacity_rps, 0),
            seed=cfg.seed,
            max_duration_s=3600,
            # The probes' rule at the staircase's top rate: a fixed 256 is what 3,200 rps
            # has in flight at twice an 80 ms SLO, under resnet_small's top steps.
            max_in_flight=max(
                2 * PROBE_IN_FLIGHT,
                probe_in_flight(max(st.rate(capacity_rps, i) for i in range(st.max_steps)), slo),
            ),
        ) as gen:
            gen.window()
            i = 0
            t0 = time.monotonic()
            while len(steps) < st.max_steps:
                rate = st.rate(capacity_rps, i)
                gen.set_rate(rate)
                await asyncio.sleep(max(0.0, t0 + (i + 1) * cfg.window_s - time.monotonic()))
                w, raw = _window(gen)
                failed += w.errors
                loop = controller.registry.loops_for(model)
                knobs = loop[0].knobs if loop else start_knobs
                approach = loop[0].approach.value if loop else "undecided"
                reason = loop[0].last_reason if loop else ""
                windows.append(
                    WindowRecord(
                        t_s=round(time.monotonic() - t0, 3),
                        rate_rps=rate,
                        slo_ms=slo.latency_ms,
                        completed=w.completed,
                        failed=w.errors,
                        throughput_rps=w.throughput_rps,
                        latency_ms=w.latency_at(slo.percentile),
                        knobs=knobs,
                        approach=approach,
                        changed=bool(windows) and windows[-1].knobs != knobs,
                        reason=reason,
                    )
                )
                lats.append(raw)
                i += 1
                if i % st.step_windows == 0:
                    steps = m.step_results(st, windows, lats, slo.percentile)
                    s = steps[-1]
                    progress(
                        f"{model} {policy}: step {len(steps)} {s.rate_rps:.0f} rps "
                        f"{'pass' if s.passed else 'FAIL'} "
                        f"b{knobs.max_batch_size} n{knobs.instances}"
                    )
                    if m.should_stop(st, windows, steps):
                        break
            error_log = gen.error_report() if gen.errors else ""
            defect = adapter.upstream_defect(gen)
        loops = controller.registry.loops_for(model)
        changes = loops[0].knob_changes if loops else 0
    finally:
        agent.stop()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(task, 15)
        await backend.close()
        await controller.stop()
    final = windows[-1] if windows else None
    return OnlineRun(
        policy=policy,
        windows=windows,
        latencies=lats,
        steps=steps,
        knob_changes=changes,
        failed_requests=failed,
        approach=final.approach if final else "undecided",
        final_knobs=final.knobs if final else start_knobs,
        failed_request_log=error_log,
        upstream_defect=defect,
    )


def _window(gen: LoadGen) -> tuple[LoadWindow, np.ndarray]:
    """The load generator's window plus its raw latencies (ms)."""
    w = gen.window()
    raw = np.asarray(w.latencies_ms, dtype=float)
    # Arrivals shed past the in-flight bound never met the SLO: count them as infinitely late.
    return w, np.concatenate([raw, np.full(w.dropped, np.inf)])
