"""Client-side measurements on one started server: apply knobs and wait for them, then
read a tail latency at an open-loop rate, a closed-loop throughput, or the model's speed.

They are the sweep's and the convergence test's building blocks; the load generator
shares the box with the server, so absolute figures depend on the machine.
"""

from __future__ import annotations

import asyncio
import math
import time

from dnnscaler.agents.backend import Backend, ModelInfo
from dnnscaler.bench.adapter import H, ServerAdapter, ServerHandle
from dnnscaler.bench.config import BenchConfig
from dnnscaler.bench.retries import UpstreamDefectError
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs, Slo

log = get_logger(__name__)

PROBE_IN_FLIGHT = 128


async def apply_and_wait(
    backend: Backend, model: str, knobs: Knobs, timeout_s: float = 120.0
) -> None:
    """Apply ``knobs`` through the agent's backend and wait until the server shows them."""
    await backend.apply(model, knobs)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        info = await model_info(backend, model)
        if info.knobs == knobs:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{model}: knobs {knobs} not in force after {timeout_s:.0f}s")


async def apply_settled(server: ServerHandle, model: str, knobs: Knobs) -> None:
    """``apply_and_wait`` on the server's setup backend, then wait until the reload has
    finished on the server (``ServerHandle.wait_settled``): what a client measures next is
    the new config, not the old one's teardown."""
    await apply_and_wait(server.setup, model, knobs)
    waited = await server.wait_settled(model, knobs)
    if waited >= 0.05:
        log.info("bench.reload_settled", model=model, knobs=str(knobs), waited_s=round(waited, 1))


async def model_info(backend: Backend, model: str) -> ModelInfo:
    """``model`` as the backend lists it (knobs in force, limits)."""
    for info in await backend.list_models():
        if info.name == model:
            return info
    raise KeyError(f"model {model!r} is not loaded")


def probe_in_flight(rate_rps: float, slo: Slo) -> int:
    """The most requests a probe keeps in flight at ``rate_rps``: twice what Little's law
    allows while every request meets the SLO (``rate x L``), and at least
    ``PROBE_IN_FLIGHT``.

    Arrivals past the bound are not sent and count as failures, so the bound must be one
    that only a config breaking the SLO reaches. A fixed 128 was not: at 2,114 rps under an
    SLO of 78.6 ms, 166 requests are in flight with every one on time, and ``resnet_small``'s
    b8 n2 failed the ladder with a p99 of 71 ms (12-05, clean-clone CI: 0.78 x the oracle's
    b8 n4, whose shorter latency kept it under the bound)."""
    return max(PROBE_IN_FLIGHT, math.ceil(2.0 * rate_rps * slo.latency_ms / 1000.0))


async def open_loop_probe(
    adapter: ServerAdapter[H],
    server: H,
    model: str,
    rate: float,
    slo: Slo,
    cfg: BenchConfig,
    seed: int,
) -> tuple[float | None, int, int]:
    """p-th percentile (ms) over ``probe_s`` after ``warm_s`` at ``rate``; errors (arrivals
    not sent at the in-flight bound included); completed."""
    # A bounded number in flight: far past capacity, Triton 2.51's Python backend crashed
    # (SIGSEGV) with hundreds of requests queued.
    async with adapter.load_gen(
        server,
        model,
        rate_rps=rate,
        seed=seed,
        max_duration_s=120,
        max_in_flight=probe_in_flight(rate, slo),
    ) as gen:
        await asyncio.sleep(cfg.warm_s)
        w = await gen.run_for(cfg.probe_s)
    return w.latency_at(slo.percentile), w.errors + w.dropped, w.completed


async def closed_loop_throughput(
    adapter: ServerAdapter[H], server: H, model: str, concurrency: int, seconds: float
) -> float:
    """Completions per second with ``concurrency`` requests always in flight (at most
    ``PROBE_IN_FLIGHT``)."""
    concurrency = min(concurrency, PROBE_IN_FLIGHT)
    async with adapter.load_gen(server, model, concurrency=concurrency, max_duration_s=60) as gen:
        await asyncio.sleep(1.0)
        w = await gen.run_for(seconds)
    return w.throughput_rps


async def unit_latency_ms(
    adapter: ServerAdapter[H], server: H, model: str, seconds: float = 1.5
) -> float:
    """Median client latency of one request at a time (no queue, no batch): how fast this
    box runs ``model`` right now.

    These boxes slow down by 2-3 x without warning and without steal or a visible
    neighbour (12-03: ``wide_mlp``'s oracle swept at 365 rps in CI against 900 on a quiet
    host). A test that must hold its regime (the SLO against the model's compute time)
    states its SLO in these units; one that must judge in one regime compares two readings.
    On a quiet 2-core box five readings agree within 3 %.
    """
    async with adapter.load_gen(server, model, concurrency=1, max_duration_s=60) as gen:
        await asyncio.sleep(0.3)
        w = await gen.run_for(seconds)
    defect = adapter.upstream_defect(gen) if w.errors else None
    if defect:
        raise UpstreamDefectError(f"{model}: speed probe hit {adapter.name}'s own defect: {defect}")
    if w.latency_p50_ms is None or w.errors:
        raise RuntimeError(
            f"{model}: speed probe failed: {w.completed} completed, {w.errors} errors"
            f" ({gen.error_report()})"
        )
    return w.latency_p50_ms
