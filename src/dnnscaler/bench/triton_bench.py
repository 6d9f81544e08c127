"""`dnnscaler bench triton`: the benchmark protocol on a local real Triton (CPU or GPU).

Per model, in one run: an oracle sweep over a reduced grid (capacity of each config by
bisection on the open-loop Poisson rate, p-th percentile measured on the client side), then a
staircase per policy with the real controller and agent in this process over loopback gRPC.
The sweep and every staircase run get a Triton of their own, started fresh, so that a server
that crashed or hung under overload cannot spoil the next run; a failed run is recorded
(capacity 0, its error) and the bench goes on. Figures are those of ``docs/results``: online
capacity, ratio to oracle / aimd / paper, violation rate, settle windows, knob changes,
failed requests.

The load generator shares the box with Triton, so absolute numbers depend on the machine;
ratios measured side by side in one run are what the report quotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.backend import ModelInfo
from dnnscaler.agents.config import AgentConfig
from dnnscaler.bench import metrics as m
from dnnscaler.bench.host_load import HostLoad, HostMeter
from dnnscaler.bench.online import WindowRecord
from dnnscaler.bench.records import BenchRecord, with_ratios
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs, Slo
from dnnscaler.policies.dnnscaler_policy import DnnScalerState, plan_summary

log = get_logger(__name__)

PROBE_IN_FLIGHT = 128
TRITON_POLICIES = ("dnnscaler", "paper", "aimd", "static-default", "oracle")
DEFAULT_SLO_MS = {"wide_mlp": 60.0, "serial_io": 60.0, "resnet_small": 80.0}


@dataclass(frozen=True)
class TritonBenchConfig:
    models: tuple[str, ...] = ("wide_mlp", "serial_io", "resnet_small")
    policies: tuple[str, ...] = TRITON_POLICIES
    slo_ms: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SLO_MS))
    percentile: float = 99.0
    window_s: float = 1.0
    batch_grid: tuple[int, ...] = (1, 4, 16)
    instance_grid: tuple[int, ...] = (1, 2, 4)
    probe_s: float = 4.0
    warm_s: float = 1.0
    bisect_iters: int = 4
    staircase: m.Staircase = field(
        default_factory=lambda: m.Staircase(
            start_frac=0.3, step_frac=0.1, max_frac=1.3, step_windows=8, min_half_requests=0
        )
    )
    seed: int = 0
    # A staircase run whose server crashed or stalled (Triton 2.51's tracing bug, see
    # docs/triton.md) is repeated this many times on a fresh server; every attempt's failure
    # is kept in the report's ``errors``.
    retries: int = 1

    def slo_for(self, model: str) -> Slo:
        return Slo(latency_ms=self.slo_ms.get(model, 60.0), percentile=self.percentile)


@dataclass(frozen=True)
class Probe:
    knobs: Knobs
    rate_rps: float
    latency_ms: float | None
    passed: bool
    errors: int


@dataclass
class ConfigCapacity:
    knobs: Knobs
    capacity_rps: float
    probes: list[Probe] = field(default_factory=list)
    # Not bisected (``capacity_rps`` 0): its throughput ceiling was under a capacity the
    # sweep had already measured, so it could not be the best config.
    pruned: bool = False


# -- helpers ------------------------------------------------------------------------------


async def apply_and_wait(backend: Any, model: str, knobs: Knobs, timeout_s: float = 120.0) -> None:
    """Apply ``knobs`` through the agent's backend and wait until Triton shows them."""
    await backend.apply(model, knobs)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        info = await _info(backend, model)
        if info.knobs == knobs:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{model}: knobs {knobs} not in force after {timeout_s:.0f}s")


async def _info(backend: Any, model: str) -> ModelInfo:
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


async def _open_loop_probe(
    url: str, model: str, rate: float, slo: Slo, cfg: TritonBenchConfig, seed: int
) -> tuple[float | None, int, int]:
    """p-th percentile (ms) over ``probe_s`` after ``warm_s`` at ``rate``; errors (arrivals
    not sent at the in-flight bound included); completed."""
    from dnnscaler.loadgen.generator import LoadGen

    # A bounded number in flight: far past capacity, Triton 2.51's Python backend crashed
    # (SIGSEGV) with hundreds of requests queued.
    async with LoadGen(
        url,
        model,
        rate_rps=rate,
        seed=seed,
        max_duration_s=120,
        max_in_flight=probe_in_flight(rate, slo),
    ) as gen:
        await asyncio.sleep(cfg.warm_s)
        w = await gen.run_for(cfg.probe_s)
    return w.latency_at(slo.percentile), w.errors + w.dropped, w.completed


async def _closed_loop_throughput(url: str, model: str, concurrency: int, seconds: float) -> float:
    from dnnscaler.loadgen.generator import LoadGen

    concurrency = min(concurrency, PROBE_IN_FLIGHT)
    async with LoadGen(url, model, concurrency=concurrency, max_duration_s=60) as gen:
        await asyncio.sleep(1.0)
        w = await gen.run_for(seconds)
    return w.throughput_rps


async def unit_latency_ms(url: str, model: str, seconds: float = 1.5) -> float:
    """Median client latency of one request at a time (no queue, no batch): how fast this
    box runs ``model`` right now.

    These boxes slow down by 2-3 x without warning and without steal or a visible
    neighbour (12-03: ``wide_mlp``'s oracle swept at 365 rps in CI against 900 on a quiet
    host). A test that must hold its regime (the SLO against the model's compute time)
    states its SLO in these units; one that must judge in one regime compares two readings.
    On a quiet 2-core box five readings agree within 3 %.
    """
    from dnnscaler.loadgen.generator import LoadGen

    async with LoadGen(url, model, concurrency=1, max_duration_s=60) as gen:
        await asyncio.sleep(0.3)
        w = await gen.run_for(seconds)
    defect = gen.upstream_defect() if w.errors else None
    if defect:
        raise UpstreamDefectError(f"{model}: speed probe hit Triton's own defect: {defect}")
    if w.latency_p50_ms is None or w.errors:
        raise RuntimeError(
            f"{model}: speed probe failed: {w.completed} completed, {w.errors} errors"
            f" ({gen.error_report()})"
        )
    return w.latency_p50_ms


async def measure_capacity(
    url: str,
    backend: Any,
    model: str,
    knobs: Knobs,
    slo: Slo,
    cfg: TritonBenchConfig,
    beat_rps: float = 0.0,
) -> ConfigCapacity:
    """Highest open-loop rate at which the p-th percentile stays within the SLO.

    The bisection never probes above 1.05 x the closed-loop throughput, so a config whose
    bound is at most ``beat_rps`` cannot exceed it: it is returned ``pruned``, unprobed.
    """
    await apply_and_wait(backend, model, knobs)
    conc = max(2, 2 * knobs.instances * knobs.max_batch_size)
    ceiling = await _closed_loop_throughput(url, model, conc, 2.0)
    out = ConfigCapacity(knobs, 0.0)
    lo, hi = 0.0, max(1.0, ceiling * 1.05)
    if hi <= beat_rps:
        out.pruned = True
        log.info("config_pruned", model=model, knobs=str(knobs), bound_rps=round(hi, 1))
        return out
    for i in range(cfg.bisect_iters):
        rate = hi if i == 0 else (lo + hi) / 2
        lat, errors, _ = await _open_loop_probe(url, model, rate, slo, cfg, cfg.seed + i)
        ok = lat is not None and lat <= slo.latency_ms and errors == 0
        out.probes.append(Probe(knobs, round(rate, 2), lat, ok, errors))
        if ok:
            lo = rate
            if i == 0:
                break
        else:
            hi = rate
    out.capacity_rps = lo
    log.info("config_capacity", model=model, knobs=str(knobs), capacity_rps=round(lo, 1))
    return out


def grid(cfg: TritonBenchConfig, info: ModelInfo) -> list[Knobs]:
    bs = sorted({b for b in cfg.batch_grid if b <= info.limits.max_batch_size})
    ns = sorted({n for n in cfg.instance_grid if n <= info.limits.max_instances})
    # Queue delay 0, as every policy here runs and as the sim's oracle: with instances busy,
    # batches form from what queued meanwhile. (A 2 ms delay gained nothing on these models
    # and a reload with one set preceded a Triton 2.51 SIGSEGV under load.)
    return [Knobs(b, n, 0) for b in bs for n in ns]


@contextlib.asynccontextmanager
async def untraced(url: str) -> AsyncIterator[None]:
    """Request tracing off on the server meanwhile (restored on exit if it was on).

    Triton 2.51 with request tracing on corrupts its heap (SIGSEGV/SIGABRT in
    ``TRITONBACKEND_RequestRelease``) or hangs when Python-backend models with 2+ instances
    execute batches under a saturating load: 2 runs of 2 crashed or hung in a closed loop at
    32 in flight on ``wide_mlp`` b8 n2, 0 of 16 without tracing (2026-11-29). Client-side
    measurements (oracle sweeps, side-by-side ladders) need no server traces, so they run
    without; only the agent's per-window tail needs them.
    """
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        before = await client.get_trace_settings(as_json=True, client_timeout=10)
        level = before.get("settings", {}).get("trace_level", {}).get("value", ["OFF"])
        was_on = [x for x in level if x != "OFF"]
        if was_on:
            await client.update_trace_settings(settings={"trace_level": ["OFF"]}, client_timeout=10)
        try:
            yield
        finally:
            if was_on:
                with contextlib.suppress(Exception):  # a dead server has nothing to restore
                    await client.update_trace_settings(
                        settings={"trace_level": was_on}, client_timeout=10
                    )
    finally:
        await client.close()


async def oracle_sweep(
    url: str,
    backend: Any,
    model: str,
    slo: Slo,
    cfg: TritonBenchConfig,
    progress: Callable[[str], None] = lambda s: None,
    prune: bool = False,
) -> list[ConfigCapacity]:
    """Every grid config's capacity. With ``prune``, only the best one is sure to be
    measured: configs go from the most parallel (batch x instances) down and one whose
    throughput bound is under the best capacity so far is not bisected (same argmax, about
    half the probes when the best comes early)."""
    info = await _info(backend, model)
    out: list[ConfigCapacity] = []
    configs = grid(cfg, info)
    if prune:
        configs.sort(key=lambda k: (-k.max_batch_size * k.instances, -k.max_batch_size))
    async with untraced(url):
        for k in configs:
            progress(f"{model}: oracle b{k.max_batch_size} n{k.instances}")
            best = max((c.capacity_rps for c in out), default=0.0) if prune else 0.0
            out.append(await measure_capacity(url, backend, model, k, slo, cfg, best))
    return out


# -- online runs ------------------------------------------------------------------------


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
    # Set when every failed request was a Triton defect (``known_defects``): a run to repeat.
    upstream_defect: str | None = None


async def run_staircase(
    url: str,
    metrics_url: str | None,
    setup_backend: Any,
    model: str,
    policy: str,
    start_knobs: Knobs,
    slo: Slo,
    capacity_rps: float,
    cfg: TritonBenchConfig,
    static_knobs: Knobs | None = None,
    progress: Callable[[str], None] = lambda s: None,
) -> OnlineRun:
    """One policy on the staircase, with the real controller and agent over loopback."""
    from dnnscaler.agents.backends.triton import TritonBackend
    from dnnscaler.loadgen.generator import LoadGen

    await apply_and_wait(setup_backend, model, start_knobs)
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
    backend = TritonBackend(url, metrics_url=metrics_url)
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
        async with LoadGen(
            url,
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
            defect = gen.upstream_defect()
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


def _window(gen: Any) -> tuple[Any, np.ndarray]:
    """The load generator's window plus its raw latencies (ms)."""
    w = gen.window()
    raw = np.asarray(w.latencies_ms, dtype=float)
    # Arrivals shed past the in-flight bound never met the SLO: count them as infinitely late.
    return w, np.concatenate([raw, np.full(w.dropped, np.inf)])


def record_for(
    model: str,
    run: OnlineRun,
    oracle: ConfigCapacity,
    slo: Slo,
    cfg: TritonBenchConfig,
    death_note: str | None = None,
) -> BenchRecord:
    cap, _ = m.online_capacity(run.steps)
    settle = m.settle_windows(run.windows[: cfg.staircase.step_windows * 3])
    return BenchRecord(
        model=model,
        policy=run.policy,
        approach=run.approach,
        final_knobs=run.final_knobs,
        online_capacity_rps=round(cap, 2),
        oracle_capacity_rps=round(oracle.capacity_rps, 2),
        oracle_knobs=oracle.knobs,
        ratio_to_oracle=(cap / oracle.capacity_rps) if oracle.capacity_rps > 0 else None,
        violation_rate=m.violation_rate(run.windows),
        settle_windows=settle,
        failed_requests=run.failed_requests,
        knob_changes=run.knob_changes,
        slo_ms=slo.latency_ms,
        percentile=slo.percentile,
        window_s=cfg.window_s,
        error=run_error(run.windows, death_note, run.upstream_defect),
        failed_request_log=run.failed_request_log,
    )


def run_error(
    windows: Sequence[WindowRecord], death_note: str | None, upstream_defect: str | None = None
) -> str | None:
    """Why a finished run measured the server's fault rather than the policy, else None: a
    stall, or the server's death (a crash in a run's last windows is too short for the stall
    rule, yet its failed requests are the server's: run 6, resnet_small), or failed requests
    that were all a Triton defect (``known_defects``)."""
    stall = server_stall(windows)
    if stall is None and death_note:
        return f"server died during the run: {death_note}"
    if stall is None and upstream_defect:
        return f"failed requests were a server defect: {upstream_defect}"
    return stall


STALL_WINDOWS = 5


class UpstreamDefectError(RuntimeError):
    """Every failed request of a probe was Triton's own defect (``known_defects``): the
    server, not the config or the client, failed it (fresh-clone run 26: INVALID_ARGUMENT
    in the speed probe, one request at a time, no reload under way)."""


class ServerStalled(RuntimeError):
    """The server completed no request for ``STALL_WINDOWS`` windows under load."""


async def with_retries(
    attempt: Callable[[int], Awaitable[tuple[BenchRecord, OnlineRun | None]]], retries: int
) -> tuple[BenchRecord, OnlineRun | None]:
    """``attempt(1)``, then again (``attempt(2)``, ...) while its record has an ``error``, at
    most ``retries`` more times; the last attempt's result."""
    k = 1
    rec, run = await attempt(k)
    while rec.error and k <= retries:
        k += 1
        rec, run = await attempt(k)
    return rec, run


def server_stall(windows: Sequence[WindowRecord]) -> str | None:
    """A note when the server completed nothing for ``STALL_WINDOWS`` windows or more in a
    row while load was offered (Triton 2.51 hangs this way, see docs/triton.md), else None:
    such a run measures the server's fault, not the policy."""
    run, start = 0, 0.0
    for w in windows:
        if w.rate_rps > 0 and w.completed == 0:
            if run == 0:
                start = w.t_s
            run += 1
            if run >= STALL_WINDOWS:
                return (
                    f"server stalled: no request completed from t={start:.0f}s "
                    f"({sum(1 for x in windows if x.t_s >= start and x.completed == 0)} "
                    f"windows at {w.knobs})"
                )
        else:
            run = 0
    return None


def failed_record(
    model: str,
    policy: str,
    start_knobs: Knobs,
    oracle: ConfigCapacity,
    slo: Slo,
    cfg: TritonBenchConfig,
    error: str,
) -> BenchRecord:
    """The record of a staircase run that raised: capacity 0, ``error`` says why. Its
    violation rate is unknown (NaN, ``null`` in results.json)."""
    return BenchRecord(
        model=model,
        policy=policy,
        approach="failed",
        final_knobs=start_knobs,
        online_capacity_rps=0.0,
        oracle_capacity_rps=round(oracle.capacity_rps, 2),
        oracle_knobs=oracle.knobs,
        ratio_to_oracle=0.0 if oracle.capacity_rps > 0 else None,
        violation_rate=float("nan"),
        settle_windows=None,
        failed_requests=0,
        knob_changes=0,
        slo_ms=slo.latency_ms,
        percentile=slo.percentile,
        window_s=cfg.window_s,
        error=error,
    )


def describe_error(exc: BaseException, limit: int = 800) -> str:
    """``Type: message`` on one line (with any notes), at most ``limit`` characters."""
    parts = [str(exc), *getattr(exc, "__notes__", ())]
    text = " | ".join(x.strip() for part in parts for x in part.splitlines() if x.strip())
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= limit else out[: limit - 3] + "..."


@dataclass
class BenchServer:
    """A freshly started Triton for one oracle sweep or one staircase run."""

    grpc_url: str
    metrics_url: str | None
    setup: Any  # a started TritonBackend on this server, for applying knobs
    triton: Any = None  # the LocalTriton, to tell whether it died

    def death_note(self) -> str | None:
        """A line on the server's death (exit code, log tail), or None while it runs."""
        return self.triton.death_note(3) if self.triton is not None else None


@contextlib.asynccontextmanager
async def start_server(
    repo: Path, models: Sequence[str], workdir: Path
) -> AsyncIterator[BenchServer]:
    """A new LocalTriton serving ``models`` from ``repo`` in its own ``workdir``, with a
    started setup backend; both stopped on exit. An exception from the body gets a note
    when the server died meanwhile (a crash under overload, say)."""
    from dnnscaler.agents.backends.triton import TritonBackend
    from dnnscaler.triton.launcher import LocalTriton

    async with LocalTriton(repo, list(models), workdir=workdir) as triton:
        setup = TritonBackend(triton.grpc_url, metrics_url=triton.metrics_url)
        server = BenchServer(triton.grpc_url, triton.metrics_url, setup, triton)
        try:
            await setup.start()
            yield server
        except Exception as exc:
            note = server.death_note()
            if note:
                exc.add_note(note)
            raise
        finally:
            try:
                await setup.close()
            except Exception as exc:  # the run's own outcome matters more
                log.warning("bench.setup_close_failed", error=describe_error(exc))


@dataclass
class TritonBenchResult:
    records: list[BenchRecord]
    oracles: dict[str, list[ConfigCapacity]]
    runs: dict[tuple[str, str], OnlineRun]
    seconds: float
    # One entry per failed oracle sweep or staircase run: model, policy (None for an oracle
    # sweep), stage ("oracle" or "staircase") and the error.
    errors: list[dict[str, Any]] = field(default_factory=list)


async def run_triton_bench(
    cfg: TritonBenchConfig,
    progress: Callable[[str], None] = lambda s: None,
    on_update: Callable[[TritonBenchResult], None] | None = None,
) -> TritonBenchResult:
    """Every model's oracle sweep, then its staircase per policy; each on a Triton of its
    own, started fresh (a crash cannot leak into the next run; every policy starts from the
    same state). A sweep or run that raises is logged and recorded, and the bench goes on:
    a failed run gets a record with capacity 0 and its ``error``; a failed sweep skips the
    model's policies. ``on_update`` gets the result so far after each run and failure."""
    from dnnscaler.triton.demo_models import write_repository

    t_start = time.monotonic()
    records: list[BenchRecord] = []
    oracles: dict[str, list[ConfigCapacity]] = {}
    runs: dict[tuple[str, str], OnlineRun] = {}
    errors: list[dict[str, Any]] = []

    def snapshot() -> TritonBenchResult:
        return TritonBenchResult(
            with_ratios(records),
            dict(oracles),
            dict(runs),
            time.monotonic() - t_start,
            list(errors),
        )

    def update() -> None:
        if on_update is None:
            return
        try:
            on_update(snapshot())
        except Exception as exc:  # a partial write is best effort
            progress(f"partial report not written: {describe_error(exc)}")

    def failed(model: str, policy: str | None, stage: str, exc: Exception) -> str:
        err = describe_error(exc)
        what = f"{model} {policy}" if policy else f"{model} oracle sweep"
        progress(f"{what}: FAILED {err}")
        log.warning("bench.run_failed", model=model, policy=policy, stage=stage, error=err)
        errors.append({"model": model, "policy": policy, "stage": stage, "error": err})
        return err

    with tempfile.TemporaryDirectory(prefix="dnnscaler-bench-") as tmp:
        repo = Path(tmp) / "models"
        write_repository(repo, list(cfg.models))
        n_servers = 0

        def workdir(tag: str) -> Path:
            nonlocal n_servers
            n_servers += 1
            return Path(tmp) / f"triton-{n_servers:02d}-{tag}"

        async def attempt(
            model: str,
            pol: str,
            static: Knobs | None,
            default_knobs: Knobs,
            best: ConfigCapacity,
            slo: Slo,
            k: int,
        ) -> tuple[BenchRecord, OnlineRun | None]:
            """One staircase run of ``pol`` on a fresh server (attempt ``k``)."""
            progress(f"{model}: staircase {pol}" + (f" (attempt {k})" if k > 1 else ""))
            run: OnlineRun | None = None
            died: str | None = None
            try:
                async with start_server(repo, [model], workdir(f"{model}-{pol}-{k}")) as srv:
                    run = await run_staircase(
                        srv.grpc_url,
                        srv.metrics_url,
                        srv.setup,
                        model,
                        pol,
                        default_knobs,
                        slo,
                        best.capacity_rps,
                        cfg,
                        static_knobs=static,
                        progress=progress,
                    )
                    died = srv.death_note()
            except Exception as exc:
                if run is None:
                    err = failed(model, pol, f"staircase attempt {k}", exc)
                    rec = failed_record(model, pol, default_knobs, best, slo, cfg, err)
                    return replace(rec, attempts=k), None
                # The run finished; only stopping its server went wrong.
                log.warning("bench.server_stop_failed", error=describe_error(exc))
            assert run is not None
            rec = replace(record_for(model, run, best, slo, cfg, died), attempts=k)
            if rec.error:
                failed(model, pol, f"staircase attempt {k}", RuntimeError(rec.error))
            return rec, run

        for model in cfg.models:
            slo = cfg.slo_for(model)
            try:
                async with start_server(repo, [model], workdir(f"{model}-oracle")) as srv:
                    default_knobs = (await _info(srv.setup, model)).knobs
                    sweep = await oracle_sweep(srv.grpc_url, srv.setup, model, slo, cfg, progress)
                if not sweep:
                    raise ValueError(f"{model}: no config of the grid is within the model's limits")
            except Exception as exc:
                failed(model, None, "oracle", exc)
                update()
                continue
            oracles[model] = sweep
            best = max(sweep, key=lambda c: c.capacity_rps)
            for pol in cfg.policies:
                static = {"static-default": default_knobs, "oracle": best.knobs}.get(pol)
                rec, run = await with_retries(
                    functools.partial(attempt, model, pol, static, default_knobs, best, slo),
                    cfg.retries,
                )
                if run is not None:
                    runs[(model, pol)] = run
                records.append(rec)
                update()
    return snapshot()


def oracle_rows(oracles: dict[str, list[ConfigCapacity]]) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "knobs": {
                "max_batch_size": c.knobs.max_batch_size,
                "instances": c.knobs.instances,
                "queue_delay_us": c.knobs.queue_delay_us,
            },
            "capacity_rps": round(c.capacity_rps, 2),
            "probes": [
                {
                    "rate_rps": p.rate_rps,
                    "latency_ms": p.latency_ms,
                    "passed": p.passed,
                    "errors": p.errors,
                }
                for p in c.probes
            ],
        }
        for model, caps in oracles.items()
        for c in caps
    ]


def quick_config(models: Sequence[str]) -> TritonBenchConfig:
    """A short run for smoke tests: tiny grid, short probes, coarse staircase."""
    return replace(
        TritonBenchConfig(models=tuple(models)),
        batch_grid=(1, 8),
        instance_grid=(1, 2),
        probe_s=2.0,
        warm_s=0.5,
        bisect_iters=3,
        staircase=m.Staircase(
            start_frac=0.3, step_frac=0.3, max_frac=0.9, step_windows=4, min_half_requests=0
        ),
    )


# -- command line -----------------------------------------------------------------------


def add_triton_parser(sub: Any) -> None:
    """Add ``bench triton`` to the ``bench`` group."""
    p = sub.add_parser("triton", help="policies vs the oracle on a local real Triton")
    p.add_argument("--models", default=",".join(TritonBenchConfig().models))
    p.add_argument("--policies", default=",".join(TRITON_POLICIES))
    p.add_argument("--out", type=Path, default=Path("out/bench-triton"))
    p.add_argument("--quick", action="store_true", help="tiny grid and short staircase")
    p.add_argument("--slo-ms", type=float, help="SLO for every model (default: per model)")
    p.add_argument("--percentile", type=float, default=99.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", help="oracle grid as B1,B2,...xN1,N2,... (e.g. 1,4,16x1,2,4)")
    p.add_argument(
        "--step-frac", type=float, help="staircase step as a share of oracle capacity, in (0, 1]"
    )
    p.add_argument(
        "--step-windows", type=int, help="control windows per step (default 8; 4 with --quick)"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=TritonBenchConfig.retries,
        help="repeat a run whose server crashed or stalled up to this many times (default 1)",
    )
    p.set_defaults(func=cmd_triton)


def parse_grid(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``B1,B2,...xN1,N2,...`` as (batch sizes, instance counts): positive integers, both
    lists non-empty. Raises ValueError with a message for the user."""
    form = "expected B1,B2,...xN1,N2,... (e.g. 1,4,16x1,2,4)"
    parts = text.strip().lower().split("x")
    if len(parts) != 2:
        raise ValueError(f"{form}, got {text!r}")
    out = []
    for part, what in zip(parts, ("batch sizes", "instance counts"), strict=True):
        if not part.strip():
            raise ValueError(f"no {what} in {text!r}; {form}")
        values = []
        for item in part.split(","):
            item = item.strip()
            if not re.fullmatch(r"[0-9]+", item):
                shown = repr(item) if item else "an empty value"
                raise ValueError(f"{what}: {shown} is not a positive integer (in {text!r})")
            if int(item) < 1:
                raise ValueError(f"{what}: {item} is not a positive integer (in {text!r})")
            values.append(int(item))
        out.append(tuple(values))
    return out[0], out[1]


def _names(arg: str, valid: Sequence[str], option: str) -> tuple[str, ...] | None:
    """Comma-separated names checked against ``valid``; prints the error and gives None."""
    names = tuple(x for x in arg.split(",") if x)
    unknown = [x for x in names if x not in valid]
    if unknown or not names:
        print(
            f"bench triton: {option}: unknown {unknown}; valid: {', '.join(valid)}", file=sys.stderr
        )
        return None
    return names


def _usage(option: str, message: str) -> int:
    print(f"bench triton: {option}: {message}", file=sys.stderr)
    return 2


def config_from_args(args: Any) -> TritonBenchConfig | int:
    """The bench config the options ask for, or exit code 2 after printing what is wrong."""
    from dnnscaler.triton.demo_models import DEMO_MODELS

    models = _names(args.models, tuple(DEMO_MODELS), "--models")
    policies = _names(args.policies, TRITON_POLICIES, "--policies")
    if models is None or policies is None:
        return 2
    cfg = quick_config(models) if args.quick else TritonBenchConfig(models=models)
    if args.grid is not None:
        try:
            batch_grid, instance_grid = parse_grid(args.grid)
        except ValueError as exc:
            return _usage("--grid", str(exc))
        cfg = replace(cfg, batch_grid=batch_grid, instance_grid=instance_grid)
    step_frac = getattr(args, "step_frac", None)
    if step_frac is not None:
        if not 0 < step_frac <= 1:
            return _usage("--step-frac", f"must be in (0, 1], got {step_frac:g}")
        cfg = replace(cfg, staircase=replace(cfg.staircase, step_frac=step_frac))
    step_windows = getattr(args, "step_windows", None)
    if step_windows is not None:
        if step_windows < 1:
            return _usage("--step-windows", f"must be at least 1, got {step_windows}")
        cfg = replace(cfg, staircase=replace(cfg.staircase, step_windows=step_windows))
    retries = getattr(args, "retries", TritonBenchConfig.retries)
    if retries < 0:
        return _usage("--retries", f"must be at least 0, got {retries}")
    cfg = replace(cfg, retries=retries)
    slo_ms = {
        mm: (args.slo_ms if args.slo_ms is not None else DEFAULT_SLO_MS.get(mm, 60.0))
        for mm in models
    }
    Slo(latency_ms=min(slo_ms.values()), percentile=args.percentile)  # validates, names the field
    return replace(
        cfg, policies=policies, percentile=args.percentile, seed=args.seed, slo_ms=slo_ms
    )


def write_triton_report(
    result: TritonBenchResult,
    cfg: TritonBenchConfig,
    out: Path,
    console: Any,
    *,
    complete: bool,
) -> Path:
    """``results.json`` and the rest of the report; a partial one (``complete=False``, after
    each run) skips the tables on the console and the PNGs."""
    from dnnscaler.bench.report import write_report

    return write_report(
        result.records,
        out,
        bench="triton",
        meta={
            "complete": complete,
            "seconds": round(result.seconds, 1),
            "errors": result.errors,
            "oracle_sweep": oracle_rows(result.oracles),
            "config": {
                "models": cfg.models,
                "policies": cfg.policies,
                "batch_grid": cfg.batch_grid,
                "instance_grid": cfg.instance_grid,
                "probe_s": cfg.probe_s,
                "staircase": cfg.staircase.__dict__,
            },
        },
        # Every policy's series: a baseline's 0 must be explainable from its windows.
        timeseries={key: run.windows for key, run in result.runs.items()},
        console=console,
        plots=complete,
        show=complete,
    )


def cmd_triton(args: Any) -> int:
    """Run the bench; 0 when every sweep and run finished, 1 when some failed (the report
    then lists them), 2 on a bad option."""
    from rich.console import Console

    cfg = config_from_args(args)
    if isinstance(cfg, int):
        return cfg
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)

    def partial(res: TritonBenchResult) -> None:
        write_triton_report(res, cfg, args.out, console, complete=False)

    result = asyncio.run(
        run_triton_bench(cfg, progress=lambda s: console.log(s, markup=False), on_update=partial)
    )
    path = write_triton_report(result, cfg, args.out, console, complete=True)
    for e in result.errors:
        what = e["model"] + (f" {e['policy']}" if e["policy"] else " oracle sweep")
        console.print(f"FAILED {what}: {e['error']}", style="red", markup=False, highlight=False)
    console.print(f"bench triton: {result.seconds:.0f} s; wrote {path}")
    return 1 if result.errors else 0


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
    # Set when every failed request was a Triton defect (``known_defects``), not a failed apply.
    upstream_defect: str | None = None


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
    url: str,
    metrics_url: str | None,
    setup_backend: Any,
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
    the knobs have been held that many windows: a move made in the last window is a
    decision, not yet a converged config (12-05 CI run 11: ``wide_mlp`` moved b4 n2 -> b4 n3
    in window 30 of 30, and b4 n3 was judged without the policy ever seeing it run).
    Raises ``ServerStalled`` as soon as the server completes nothing for ``STALL_WINDOWS``."""
    from dnnscaler.agents.backends.triton import TritonBackend
    from dnnscaler.loadgen.generator import LoadGen

    await apply_and_wait(setup_backend, model, start_knobs)
    controller = Controller(
        ControllerConfig(
            listen="127.0.0.1:0",
            report_interval_s=window_s,
            default_policy=policy,
            default_slo_ms=slo.latency_ms,
            default_percentile=slo.percentile,
            grace_s=0.5,
            insecure=True,  # one host: the benchmark's own loopback
        )
    )
    await controller.start()
    backend = TritonBackend(url, metrics_url=metrics_url)
    agent = Agent(AgentConfig(controller=controller.address, agent_id=f"converge-{model}"), backend)
    task = asyncio.create_task(agent.run())
    try:
        await agent.connected.wait()
        moves: list[str] = []
        changes = 0
        t0 = time.monotonic()
        async with LoadGen(url, model, rate_rps=rate_rps, seed=7, max_duration_s=600) as gen:
            idle = 0
            meter = HostMeter()
            peak: HostLoad | None = None
            last_move = 0
            limit = max(windows, max_windows or 0)
            i = 0
            while i < windows or (i < limit and i - last_move < settle_windows):
                i += 1
                await asyncio.sleep(window_s)
                load = meter.read()
                if load is not None and (peak is None or load.total_cpus > peak.total_cpus):
                    peak = load
                loop = controller.registry.loops_for(model)
                if loop and loop[0].knob_changes > changes:
                    changes = loop[0].knob_changes
                    last_move = i
                    moves.append(f"t={time.monotonic() - t0:.0f} {loop[0].last_reason}")
                idle = idle + 1 if gen.window().completed == 0 else 0
                if idle >= STALL_WINDOWS:  # a hung server: say so now, not after the run
                    raise ServerStalled(
                        f"{model}: no request completed for {idle} windows at {rate_rps:.0f} rps"
                    )
            snap = gen.snapshot()
            errors = snap.errors
            error_log = gen.error_report()
            defect = gen.upstream_defect()
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
            knobs = (await _info(setup_backend, model)).knobs
            target = _controller_target(controller, model)
            if target is None or knobs == target or time.monotonic() > end:
                break
            await asyncio.sleep(0.25)
        loops = controller.registry.loops_for(model)
        state = loops[0].policy_state if loops else None
        plan = plan_summary(state) if isinstance(state, DnnScalerState) else ""
    finally:
        agent.stop()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(task, 15)
        await backend.close()
        await controller.stop()
    settled = i - last_move >= settle_windows
    return Converged(knobs, errors, tuple(moves), plan, peak, error_log, i, settled, defect)


async def side_by_side(
    url: str,
    backend: Any,
    model: str,
    a: Knobs,
    b: Knobs,
    slo: Slo,
    start_rps: float,
    step_frac: float = 0.075,
    probe_s: float = 3.0,
    max_steps: int = 16,
    max_rps: float | None = None,
    verdict_ratio: float | None = None,
) -> tuple[float, float, list[dict[str, Any]]]:
    """Capacities of configs ``a`` and ``b`` measured alternately on one rising rate ladder,
    so both see the same rates and the same background noise (in the order a b, b a, a b,
    ... so that half the probes need no reload). Each config's capacity is the highest rate
    it passed before failing twice in a row.

    With ``verdict_ratio``, the ladder stops as soon as whether ``a >= verdict_ratio * b``
    is decided: the capacity still climbing is then a lower bound. A ladder that starts
    above ``a``'s capacity cannot decide that by climbing (12-06 CI run 17: b4 n2 failed
    the first two rungs, 0.95 and 1.0 x b8 n4's 1,501 rps, and read 0, though 0.7 x was
    never probed): then ``a`` and ``b`` are probed once more at ``verdict_ratio * b``
    (rows marked ``"floor": True``), and ``a``'s capacity is that rate if it passes."""
    cfg = replace(TritonBenchConfig(), probe_s=probe_s, warm_s=1.0)
    caps = {"a": 0.0, "b": 0.0}
    fails = {"a": 0, "b": 0}
    # The rate of a's first failure since its last pass: its capacity lies below it.
    a_failed_at: float | None = None
    log_rows: list[dict[str, Any]] = []
    in_force: Knobs | None = None

    async def probe(key: str, knobs: Knobs, rate: float, seed: int, **mark: bool) -> bool:
        nonlocal in_force
        if knobs != in_force:
            await apply_and_wait(backend, model, knobs)
            in_force = knobs
        lat, errors, _ = await _open_loop_probe(url, model, rate, slo, cfg, seed)
        ok = lat is not None and lat <= slo.latency_ms and errors == 0
        row = {"config": key, "rate_rps": round(rate, 1), "latency_ms": lat, "errors": errors}
        log_rows.append({**row, "ok": ok, **mark})
        return ok

    async with untraced(url):
        for i in range(max_steps):
            rate = start_rps * (1 + step_frac) ** i
            if max_rps is not None and rate > max_rps:
                break
            # a, b on even rungs and b, a on odd ones: each rung starts with the config the
            # last one ended on, so a reload is needed every other probe, not every probe.
            order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
            for key, knobs in order:
                if fails[key] >= 2:
                    continue
                ok = await probe(key, knobs, rate, i)
                if ok:
                    caps[key] = max(caps[key], rate)
                    fails[key] = 0
                else:
                    fails[key] += 1
                if key == "a":
                    a_failed_at = None if ok else (a_failed_at or rate)
            if fails["a"] >= 2 and fails["b"] >= 2:
                break
            if verdict_ratio is not None and (
                (fails["b"] >= 2 and caps["a"] >= verdict_ratio * caps["b"])
                # a's capacity is under the rate it first failed at, and b's over its own:
                # decided only once that rate is at or under the bar.
                or (
                    fails["a"] >= 2
                    and a_failed_at is not None
                    and a_failed_at <= verdict_ratio * caps["b"]
                )
            ):
                break
        # A hair above the bar, so that a pass reads >= verdict_ratio in floating point.
        floor = verdict_ratio * caps["b"] * (1 + 1e-6) if verdict_ratio is not None else 0.0
        if (
            floor > caps["a"]
            and fails["a"] >= 2
            and a_failed_at is not None
            and a_failed_at > floor
        ):
            # Undecided: a's capacity lies in [caps a, a_failed_at), across the bar.
            for key, knobs in (("b", b), ("a", a)) if in_force == b else (("a", a), ("b", b)):
                if await probe(key, knobs, floor, max_steps, floor=True) and key == "a":
                    caps["a"] = floor
    return caps["a"], caps["b"], log_rows
