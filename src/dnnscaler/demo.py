"""`dnnscaler demo`: the main job on an embedded default, end to end, bounded in time.

Default: a local real Triton serving the built-in demo models, the controller and one agent
in this process (real gRPC on loopback), and a load generator running a short staircase.
``--backend torchserve`` runs the same loop on a local real TorchServe (the same model code,
packed as archives) with the agent's TorchServe backend; ``--backend sim`` against simulated
GPUs. Shows a live table, then a summary table, and writes ``summary.json`` and
``demo.png``; exits 0 with nothing left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from rich.console import Console
from rich.live import Live
from rich.table import Table

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.backend import Backend
from dnnscaler.agents.config import AgentConfig
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.core.logging import configure_logging, get_logger
from dnnscaler.core.types import Knobs
from dnnscaler.v1 import admin_pb2, admin_pb2_grpc, common_pb2

log = get_logger(__name__)


@dataclass(frozen=True)
class DemoModelPlan:
    """One model in the demo: its SLO and the load staircase it gets (requests/s)."""

    name: str
    slo_ms: float
    percentile: float
    rates_rps: tuple[float, ...]


@dataclass
class Sample:
    t_s: float
    model: str
    offered_rps: float
    throughput_rps: float
    latency_ms: float | None
    client_latency_ms: float | None
    errors: int
    knobs: tuple[int, int, int]
    approach: str


class DemoEnv(Protocol):
    """The servers the demo drives: a backend for the agent and a load knob per model."""

    plans: list[DemoModelPlan]
    backend: Backend
    # ``AgentConfig`` fields that describe ``backend`` (as ``dnnscaler agent`` would be
    # configured for it); empty where the defaults do.
    agent_settings: dict[str, Any]

    def set_rate(self, model: str, rps: float) -> None: ...

    def client_window(self, model: str) -> tuple[float | None, int, float | None]:
        """Client-side (latency at the SLO percentile, errors, throughput) since the last call."""
        ...

    def failed_requests(self) -> int: ...

    def failed_request_log(self) -> dict[str, str]:
        """Per model: its failed requests' times and messages (empty when none failed)."""
        ...

    def upstream_defects(self) -> dict[str, str]:
        """Per model whose failed requests were all a Triton defect: what it did wrong."""
        ...

    def server_death(self) -> str | None:
        """How the inference server ended if it died during the run (exit code, log tail)."""
        ...


# -- environments ----------------------------------------------------------------------


class SimEnv:
    """Simulated GPUs: a multi-tenancy-friendly and a batching-friendly published network."""

    def __init__(self) -> None:
        from dnnscaler.agents.backends.sim import SimBackend, SimModelSpec
        from dnnscaler.sim.profile import shipped_profiles

        profiles = shipped_profiles()
        chosen = {"mobilenet": "imagenet/Mob-V1-025", "inception": "imagenet/Inc-V1"}
        self.plans = []
        specs = {}
        for name, prof_name in chosen.items():
            prof = profiles[prof_name]
            slo = 5.0 * prof.latency_ms(1, 1)
            # A rough ceiling for the staircase: best batch-1 multi-instance throughput.
            best = max(
                k * b * 1000.0 / prof.latency_ms(b, k)
                for k in range(1, prof.max_instances + 1)
                for b in (1, 2, 4, 8, 16)
            )
            rates = tuple(round(best * f, 1) for f in (0.2, 0.35, 0.5, 0.6))
            self.plans.append(DemoModelPlan(name, round(slo, 1), 99.0, rates))
            specs[name] = SimModelSpec(profile=prof, knobs=Knobs(), rate_rps=rates[0])
        self.sim = SimBackend(specs, seed=1)
        self.backend: Backend = self.sim
        self.agent_settings: dict[str, Any] = {}

    def set_rate(self, model: str, rps: float) -> None:
        self.sim.set_rate(model, rps)

    def client_window(self, model: str) -> tuple[float | None, int, float | None]:
        return None, 0, None

    def failed_requests(self) -> int:
        return 0

    def failed_request_log(self) -> dict[str, str]:
        return {}

    def upstream_defects(self) -> dict[str, str]:
        return {}

    def server_death(self) -> str | None:
        return None


class TritonEnv:
    """A local real Triton with the built-in demo models and one load generator per model.

    Supervised as a service manager would: a server that dies (Triton 2.51 can, under
    reloads: docs/triton.md) is started again on the same ports, with the models' config
    files as the last apply wrote them, up to ``MAX_RESTARTS`` times; the agent finds it
    there and sets its knobs again (the agent's reconcile), and the load generators'
    channels reconnect. Each death is kept (exit code, log tail) for the summary."""

    MAX_RESTARTS = 3
    SUPERVISE_S = 1.0  # how often the server's process is checked

    def __init__(self, plans: list[DemoModelPlan], workdir: Path) -> None:
        self.plans = plans
        self.workdir = workdir
        self.loadgens: dict[str, Any] = {}
        self.triton: Any = None
        self.backend: Backend = None  # type: ignore[assignment]
        self.agent_settings: dict[str, Any] = {}
        # One line per death of the server during the run, and whether it came back.
        self.deaths: list[str] = []
        self._stack = contextlib.AsyncExitStack()
        self._errors_seen: dict[str, int] = {}
        self._ports: tuple[int, int, int] = (0, 0, 0)
        self._supervisor: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    async def __aenter__(self) -> TritonEnv:
        from dnnscaler.agents.backends.triton import TritonBackend
        from dnnscaler.loadgen.generator import LoadGen
        from dnnscaler.triton.demo_models import write_repository
        from dnnscaler.triton.launcher import free_port

        repo = self.workdir / "models"
        write_repository(repo, [p.name for p in self.plans])
        # Fixed ports: a restarted server must be where the agent and the clients look.
        self._ports = (free_port(), free_port(), free_port())
        self.triton = self._server(repo, "triton")
        await self.triton.start_async()
        self._stack.push_async_callback(self._stop_server)
        self.backend = TritonBackend(self.triton.grpc_url, metrics_url=self.triton.metrics_url)
        for i, p in enumerate(self.plans):
            gen = LoadGen(
                self.triton.grpc_url, p.name, rate_rps=p.rates_rps[0], seed=i, max_duration_s=900
            )
            self.loadgens[p.name] = await self._stack.enter_async_context(gen)
        self._t0 = time.monotonic()
        self._supervisor = asyncio.create_task(self._supervise(repo))
        self._stack.push_async_callback(self._stop_supervisor)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.aclose()

    def _server(self, repo: Path, folder: str) -> Any:
        from dnnscaler.triton.launcher import LocalTriton

        grpc_port, http_port, metrics_port = self._ports
        return LocalTriton(
            repo,
            [p.name for p in self.plans],
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            workdir=self.workdir / folder,
        )

    async def _supervise(self, repo: Path) -> None:
        while True:
            await asyncio.sleep(self.SUPERVISE_S)
            if self.triton.running():
                continue
            at = time.monotonic() - self._t0
            note = self.triton.death_note(15) or "exited"
            log.error("demo.server_died", t_s=round(at, 1), death=note)
            await asyncio.to_thread(self.triton.stop)
            if len(self.deaths) >= self.MAX_RESTARTS:
                self.deaths.append(f"t={at:.0f}s: {note}; not started again")
                return
            try:
                server = self._server(repo, f"triton-restart-{len(self.deaths) + 1}")
                await server.start_async()
            except Exception as exc:  # no server to run the rest of the demo on: say why
                self.deaths.append(f"t={at:.0f}s: {note}; starting it again failed: {exc}")
                log.error("demo.server_restart_failed", error=str(exc))
                return
            self.triton = server
            back = time.monotonic() - self._t0
            self.deaths.append(f"t={at:.0f}s: {note}; started again at t={back:.0f}s")
            log.warning("demo.server_restarted", t_s=round(back, 1), pid=server.pid)

    async def _stop_supervisor(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor

    async def _stop_server(self) -> None:
        if self.triton is not None:
            await asyncio.to_thread(self.triton.stop)

    def set_rate(self, model: str, rps: float) -> None:
        self.loadgens[model].set_rate(rps)

    def client_window(self, model: str) -> tuple[float | None, int, float | None]:
        w = self.loadgens[model].window()
        pct = next(p.percentile for p in self.plans if p.name == model)
        self._errors_seen[model] = self._errors_seen.get(model, 0) + w.errors
        return w.latency_at(pct), w.errors, w.throughput_rps

    def failed_requests(self) -> int:
        return sum(self._errors_seen.values())

    def failed_request_log(self) -> dict[str, str]:
        return {m: g.error_report() for m, g in self.loadgens.items() if g.errors}

    def upstream_defects(self) -> dict[str, str]:
        found = {m: g.upstream_defect() for m, g in self.loadgens.items()}
        return {m: d for m, d in found.items() if d}

    def server_death(self) -> str | None:
        # A death the supervisor handled was stopped: only one it has not seen yet reads here.
        now = self.triton.death_note(15) if self.triton is not None else None
        return " | ".join([*self.deaths, *([now] if now else [])]) or None


class TorchServeEnv:
    """A local real TorchServe with the built-in demo models (archives of the same model
    code as Triton's) and one load generator per model, over its HTTP inference API.

    The agent's backend is built from ``AgentConfig(backend="torchserve", ...)`` as
    ``dnnscaler agent`` builds it, so the demo runs the agent as it is deployed.
    """

    def __init__(self, plans: list[DemoModelPlan], workdir: Path) -> None:
        self.plans = plans
        self.workdir = workdir
        self.loadgens: dict[str, Any] = {}
        self.server: Any = None
        self.backend: Backend = None  # type: ignore[assignment]
        self.agent_settings: dict[str, Any] = {}
        self._stack = contextlib.AsyncExitStack()
        self._errors_seen: dict[str, int] = {}

    async def __aenter__(self) -> TorchServeEnv:
        from dnnscaler.agents.cli import build_backend
        from dnnscaler.loadgen.generator import LoadGen
        from dnnscaler.torchserve.archives import build_demo_store
        from dnnscaler.torchserve.launcher import LocalTorchServe, check_workdir
        from dnnscaler.triton.demo_models import DEMO_MODELS

        store = self.workdir / "models"
        names = [p.name for p in self.plans]
        check_workdir(self.workdir / "torchserve")
        build_demo_store(store, names)
        try:
            self.server = await self._stack.enter_async_context(
                LocalTorchServe(store, names, workdir=self.workdir / "torchserve")
            )
            self.agent_settings = {
                "backend": "torchserve",
                "torchserve_management": self.server.management_url,
                "torchserve_metrics": self.server.metrics_url,
                "torchserve_access_log": str(self.server.access_log),
                "torchserve_model_store": str(store),
            }
            self.backend = build_backend(AgentConfig(**self.agent_settings))
            for i, p in enumerate(self.plans):
                gen = LoadGen(
                    self.server.inference_url,
                    p.name,
                    rate_rps=p.rates_rps[0],
                    seed=i,
                    max_duration_s=900,
                    protocol="torchserve",
                    input_shape=DEMO_MODELS[p.name].input_dims,
                )
                self.loadgens[p.name] = await self._stack.enter_async_context(gen)
        except BaseException:
            await self._stack.aclose()  # no server left running
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.backend is not None:  # the agent leaves its backend open
                await self.backend.close()
        finally:
            await self._stack.aclose()

    def set_rate(self, model: str, rps: float) -> None:
        self.loadgens[model].set_rate(rps)

    def client_window(self, model: str) -> tuple[float | None, int, float | None]:
        w = self.loadgens[model].window()
        pct = next(p.percentile for p in self.plans if p.name == model)
        self._errors_seen[model] = self._errors_seen.get(model, 0) + w.errors
        return w.latency_at(pct), w.errors, w.throughput_rps

    def failed_requests(self) -> int:
        return sum(self._errors_seen.values())

    def failed_request_log(self) -> dict[str, str]:
        return {m: g.error_report() for m, g in self.loadgens.items() if g.errors}

    def upstream_defects(self) -> dict[str, str]:
        return {}  # no TorchServe defect is known to tell apart from a failed apply

    def server_death(self) -> str | None:
        return self.server.death_note(15) if self.server is not None else None


TRITON_PLANS = [
    # Staircases sized for a 2-core CPU box shared with the load generator (docs/triton.md).
    DemoModelPlan("wide_mlp", slo_ms=50.0, percentile=99.0, rates_rps=(50, 100, 150, 200)),
    DemoModelPlan("serial_io", slo_ms=60.0, percentile=99.0, rates_rps=(30, 60, 90, 120)),
]
# The same staircases: on this box TorchServe serves these models at capacities close to
# Triton's (closed loop, 16 in flight: wide_mlp ~300 rps on one worker, serial_io ~90 on
# one worker and ~180 on two), so the same steps cross the same configs' capacities.
TORCHSERVE_PLANS = TRITON_PLANS


# -- the run ---------------------------------------------------------------------------


@dataclass
class DemoResult:
    samples: list[Sample] = field(default_factory=list)
    failed_requests: int = 0
    failed_request_log: dict[str, str] = field(default_factory=dict)
    # Models whose failed requests were all Triton's own defect (known_defects), and what.
    upstream_defects: dict[str, str] = field(default_factory=dict)
    # Set when the inference server died during the run: its exit code and log tail.
    server_death: str | None = None
    knob_changes: dict[str, int] = field(default_factory=dict)


def _table(
    rows: list[Sample], plans: dict[str, DemoModelPlan], elapsed_s: float, total_s: float
) -> Table:
    t = Table(title=f"dnnscaler demo — {elapsed_s:5.0f}/{total_s:.0f} s")
    for col in (
        "model",
        "SLO",
        "approach",
        "batch",
        "inst",
        "delay µs",
        "offered rps",
        "tput rps",
        "server p-lat ms",
        "client p-lat ms",
    ):
        t.add_column(col)
    for s in rows:
        p = plans[s.model]

        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        ok = s.latency_ms is not None and s.latency_ms <= p.slo_ms
        lat = fmt(s.latency_ms)
        t.add_row(
            s.model,
            f"p{p.percentile:g}≤{p.slo_ms:g}",
            s.approach,
            str(s.knobs[0]),
            str(s.knobs[1]),
            str(s.knobs[2]),
            f"{s.offered_rps:.0f}",
            f"{s.throughput_rps:.1f}",
            f"[green]{lat}[/]" if ok else f"[red]{lat}[/]",
            fmt(s.client_latency_ms),
        )
    return t


async def run_demo(
    env: DemoEnv, step_s: float, console: Console, policy: str
) -> tuple[DemoResult, Controller]:
    plans = {p.name: p for p in env.plans}
    steps = max(len(p.rates_rps) for p in env.plans)
    total_s = steps * step_s
    controller = Controller(
        ControllerConfig(
            listen="127.0.0.1:0",
            report_interval_s=1.0,
            default_policy=policy,
            grace_s=1.0,
            insecure=True,  # the demo's controller and agent share this host's loopback
        )
    )
    await controller.start()
    agent = Agent(
        AgentConfig(controller=controller.address, agent_id="demo-gpu0", **env.agent_settings),
        env.backend,
    )
    agent_task = asyncio.create_task(agent.run())
    result = DemoResult()
    try:
        async with grpc.aio.insecure_channel(controller.address) as ch:
            admin = admin_pb2_grpc.AdminServiceStub(ch)
            await _wait_models(admin, list(plans), timeout_s=60)
            for p in env.plans:
                await admin.SetSlo(
                    admin_pb2.SetSloRequest(
                        model=p.name,
                        slo=common_pb2.Slo(percentile=p.percentile, latency_ms=p.slo_ms),
                    )
                )
            t0 = time.monotonic()
            live_ctx: Any = (
                Live(console=console, refresh_per_second=2, transient=False)
                if console.is_terminal
                else contextlib.nullcontext()
            )
            with live_ctx as live:
                last_print = 0.0
                for i in range(steps):
                    for p in env.plans:
                        env.set_rate(p.name, p.rates_rps[min(i, len(p.rates_rps) - 1)])
                    step_end = t0 + (i + 1) * step_s
                    while (now := time.monotonic()) < step_end:
                        await asyncio.sleep(min(1.0, step_end - now))
                        rows = await _sample(admin, env, plans, time.monotonic() - t0, i)
                        result.samples.extend(rows)
                        if live is not None:
                            live.update(_table(rows, plans, time.monotonic() - t0, total_s))
                        elif time.monotonic() - last_print >= 10:
                            last_print = time.monotonic()
                            console.print(_table(rows, plans, time.monotonic() - t0, total_s))
            models = await admin.ListModels(admin_pb2.ListModelsRequest())
            result.knob_changes = {m.model: m.knob_changes for m in models.models}
        result.failed_requests = env.failed_requests()
        result.failed_request_log = env.failed_request_log()
        result.upstream_defects = env.upstream_defects()
        result.server_death = env.server_death()
    finally:
        agent.stop()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(agent_task, 15)
        await controller.stop()
    return result, controller


async def _wait_models(admin: Any, names: list[str], timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        resp = await admin.ListModels(admin_pb2.ListModelsRequest())
        if {m.model for m in resp.models if m.available} >= set(names):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"demo: the agent did not report models {names} within {timeout_s:.0f}s")


async def _sample(
    admin: Any, env: DemoEnv, plans: dict[str, DemoModelPlan], t_s: float, step: int
) -> list[Sample]:
    resp = await admin.ListModels(admin_pb2.ListModelsRequest())
    rows = []
    for m in resp.models:
        p = plans.get(m.model)
        if p is None:
            continue
        w = m.last_window
        lat: float | None = None
        if m.HasField("last_window"):
            name = "latency_p99_ms" if p.percentile > 95 else "latency_p95_ms"
            lat = getattr(w, name) if w.HasField(name) else None
        client_lat, errors, _ = env.client_window(m.model)
        rows.append(
            Sample(
                t_s=round(t_s, 2),
                model=m.model,
                offered_rps=p.rates_rps[min(step, len(p.rates_rps) - 1)],
                throughput_rps=w.throughput_rps,
                latency_ms=lat,
                client_latency_ms=client_lat,
                errors=errors,
                knobs=(m.knobs.max_batch_size, m.knobs.instances, m.knobs.queue_delay_us),
                approach=m.approach,
            )
        )
    return rows


def summarize(result: DemoResult, plans: list[DemoModelPlan]) -> list[dict[str, Any]]:
    """Per model: final knobs, approach, throughput and SLO attainment over the run."""
    out = []
    for p in plans:
        ss = [s for s in result.samples if s.model == p.name]
        if not ss:
            continue
        lats = [s.latency_ms for s in ss if s.latency_ms is not None]
        within = sum(1 for v in lats if v <= p.slo_ms)
        last = ss[-1]
        out.append(
            {
                "model": p.name,
                "slo": f"p{p.percentile:g}<={p.slo_ms:g}ms",
                "approach": last.approach,
                "final_knobs": {
                    "max_batch_size": last.knobs[0],
                    "instances": last.knobs[1],
                    "queue_delay_us": last.knobs[2],
                },
                "final_offered_rps": last.offered_rps,
                "final_throughput_rps": round(
                    sum(s.throughput_rps for s in ss[-5:]) / max(1, len(ss[-5:])), 1
                ),
                "windows_within_slo": f"{within}/{len(lats)}",
                "knob_changes": result.knob_changes.get(p.name, 0),
                "client_errors": sum(s.errors for s in ss),
            }
        )
    return out


def plot(result: DemoResult, plans: list[DemoModelPlan], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(plans), figsize=(6 * len(plans), 8), squeeze=False, sharex=True)
    for j, p in enumerate(plans):
        ss = [s for s in result.samples if s.model == p.name]
        t = [s.t_s for s in ss]
        ax = axes[0][j]
        ax.plot(t, [s.offered_rps for s in ss], label="offered")
        ax.plot(t, [s.throughput_rps for s in ss], label="throughput")
        ax.set_title(p.name)
        ax.set_ylabel("requests/s")
        ax.legend(loc="upper left")
        ax = axes[1][j]
        ax.plot(
            t, [s.latency_ms if s.latency_ms is not None else math.nan for s in ss], label="server"
        )
        if any(s.client_latency_ms is not None for s in ss):
            ax.plot(
                t,
                [s.client_latency_ms if s.client_latency_ms is not None else math.nan for s in ss],
                label="client",
            )
        ax.axhline(p.slo_ms, color="red", linestyle="--", label="SLO")
        ax.set_ylabel(f"p{p.percentile:g} latency ms")
        ax.legend(loc="upper left")
        ax = axes[2][j]
        ax.step(t, [s.knobs[0] for s in ss], where="post", label="max batch")
        ax.step(t, [s.knobs[1] for s in ss], where="post", label="instances")
        ax.set_ylabel("knobs")
        ax.set_xlabel("seconds")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SUMMARY_COLUMNS = (
    "model",
    "slo",
    "approach",
    "final_knobs",
    "final_offered_rps",
    "final_throughput_rps",
    "windows_within_slo",
    "knob_changes",
    "client_errors",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the embedded default end to end (real Triton by default)")
    p.add_argument("--backend", choices=("triton", "torchserve", "sim"), default="triton")
    p.add_argument("--step-s", type=float, default=30.0, help="seconds per load step (4 steps)")
    p.add_argument("--policy", default="dnnscaler")
    p.add_argument("--out", default="out/demo", help="folder for summary.json and demo.png")
    p.set_defaults(func=run)


@contextlib.asynccontextmanager
async def _env(args: argparse.Namespace) -> AsyncIterator[DemoEnv]:
    if args.backend == "sim":
        yield SimEnv()
        return
    with tempfile.TemporaryDirectory(prefix="dnnscaler-demo-") as tmp:
        if args.backend == "torchserve":
            async with TorchServeEnv(TORCHSERVE_PLANS, Path(tmp)) as ts_env:
                yield ts_env
            return
        async with TritonEnv(TRITON_PLANS, Path(tmp)) as env:
            yield env


def _setup_errors(backend: str) -> tuple[type[Exception], ...]:
    """The errors that mean the demo's TorchServe could not be set up (not installed, no
    Java, a worker that could not start, a TMPDIR too deep): told in one line, exit 1. None
    for the other backends, whose errors propagate as before."""
    if backend != "torchserve":
        return ()
    from dnnscaler.torchserve.archives import ArchiveError
    from dnnscaler.torchserve.install import TorchServeNotInstalled
    from dnnscaler.torchserve.launcher import TorchServeStartError

    return (TorchServeNotInstalled, TorchServeStartError, ArchiveError)  # + WorkdirTooLong


def _cancel_on_sigterm(state: dict[str, Any]) -> None:
    """SIGTERM cancels the running task from the event loop, so that every cleanup (the
    server's stop first) runs as on Ctrl-C; ``state`` gets ``came`` and the replaced
    handler (``previous``), which the caller restores and calls once the loop is closed.

    The CLI's own handler raises ``Terminated`` wherever the main thread is: under the
    demo's load that crashed CPython 3.11 (SIGSEGV in the eval loop: the TorchServe demo
    3 of 3 tries, the Triton demo 1 of 3) and left the server running."""
    task = asyncio.current_task()
    previous = signal.getsignal(signal.SIGTERM)
    if (
        task is None
        or previous is None
        or threading.current_thread() is not threading.main_thread()
    ):
        return

    def cancel() -> None:
        state["came"] = True
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, cancel)
    state["previous"] = previous


def run(args: argparse.Namespace) -> int:
    if args.step_s <= 0:
        raise ValueError("--step-s must be > 0")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Keep the terminal for the tables: the run's structured logs go to a file.
    log_file = (out / "demo.log").open("w")
    configure_logging(args.log_level, file=log_file)
    console.print(f"dnnscaler demo ({args.backend}): logs in {out / 'demo.log'}")

    # SIGTERM while the demo runs: whether it came, and the handler it replaced.
    sigterm: dict[str, Any] = {}

    async def go() -> tuple[DemoResult, list[DemoModelPlan]]:
        _cancel_on_sigterm(sigterm)
        async with _env(args) as env:
            result, _ = await run_demo(env, args.step_s, console, args.policy)
            return result, env.plans

    try:
        try:
            result, plans = asyncio.run(go())
        finally:
            if "previous" in sigterm:  # closing the loop left SIGTERM at SIG_DFL
                signal.signal(signal.SIGTERM, sigterm["previous"])
    except _setup_errors(args.backend) as exc:
        print(f"dnnscaler demo: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if sigterm.get("came"):
            signal.raise_signal(signal.SIGTERM)  # now the CLI's handler: exit 143
        raise
    finally:
        configure_logging(args.log_level)
        log_file.close()
    summary = summarize(result, plans)
    t = Table(title="demo summary")
    for col in SUMMARY_COLUMNS:
        t.add_column(col)
    for row in summary:
        k = row["final_knobs"]
        knobs = f"b{k['max_batch_size']} n{k['instances']} d{k['queue_delay_us']}"
        t.add_row(*[knobs if c == "final_knobs" else str(row[c]) for c in SUMMARY_COLUMNS])
    console.print(t)
    (out / "summary.json").write_text(
        json.dumps(
            {
                "backend": args.backend,
                "models": summary,
                "failed_requests": result.failed_requests,
                "failed_request_log": result.failed_request_log,
                "failed_requests_upstream_defects": result.upstream_defects,
                "server_death": result.server_death,
                "samples": [s.__dict__ for s in result.samples],
            },
            indent=1,
        )
    )
    plot(result, plans, out / "demo.png")
    files = f"{out / 'summary.json'} and {out / 'demo.png'}"
    console.print(f"wrote {files}; failed requests: {result.failed_requests}")
    if result.server_death:
        # Triton 2.51 can crash under load with tracing on (docs/triton.md): say so, and fail.
        console.print(
            f"the inference server died: {result.server_death}", style="red", markup=False
        )
        return 1
    return 0
