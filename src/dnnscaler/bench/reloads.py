"""``dnnscaler bench reloads``: knob changes on a real Triton under load, counted.

Operators need reconfiguration that no client notices. This soak applies a cycle of knob
changes (instances up, batch size, queue delay, instances down, batch and delay together)
through the agent's own Triton backend, the production path (full reloads, read back,
rollback on failure), while an open-loop client sends requests. Meanwhile:

- the client keeps every failed request's time and message (``LoadGen.errors``);
- a poller asks for the model's statistics, metadata and config every ``poll_s``, as the
  agent and other tools do, and counts the calls a reload left unanswered;
- the agent's observation runs every second and its windows are compared with the
  client's: a window that saw no completion while the client saw some is a false window
  (the controller would read an idle model).

The run fails (exit 1) on any failed request, any change not in force, or a dead server;
the report keeps the causes. The heavy run (``--reloads 200``) is a benchmark command; the
test suite runs a short one (``tests/integration/test_bench_reloads.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs

log = get_logger(__name__)


def cycle(max_batch: int) -> tuple[tuple[str, Knobs], ...]:
    """One cycle of changes, every kind of reload, within the model's batch limit: it
    starts and ends at batch ``lo`` with one instance (the demo models' start config for
    the three real ones)."""
    hi = min(32, max_batch)
    lo = max(1, hi // 2)
    return (
        ("instances up", Knobs(max_batch_size=lo, instances=2)),
        ("batch size", Knobs(max_batch_size=hi, instances=2)),
        ("queue delay", Knobs(max_batch_size=hi, instances=2, queue_delay_us=500)),
        ("instances down", Knobs(max_batch_size=hi, instances=1, queue_delay_us=500)),
        ("batch and delay", Knobs(max_batch_size=lo, instances=1)),
    )


POLLED = ("statistics", "metadata", "config")
MAX_KEPT = 50  # failures kept with their messages, per kind


@dataclass(frozen=True)
class ReloadConfig:
    model: str = "wide_mlp"
    reloads: int = 200
    rate_rps: float = 200.0
    dwell_s: float = 1.0  # load served at each config before the next change
    poll_s: float = 0.05  # statistics / metadata / config poll interval
    observe_s: float = 1.0  # the agent's observation window
    tracing: bool = True  # the agent's request tracing, as it runs in production
    seed: int = 0


@dataclass(frozen=True)
class Reload:
    index: int
    kind: str
    knobs: Knobs
    start_s: float  # since the load started
    seconds: float  # from the apply call to the knobs read back in force
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class Window:
    """One observation window: the agent's reading and the client's, over the same span."""

    end_s: float
    server_completed: int
    client_completed: int
    client_errors: int
    client_p99_ms: float | None
    reloading: bool  # a change was in flight at some point of the window


@dataclass
class PollTally:
    calls: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)  # "t=..s rpc: message", the first ones
    during_reload: int = 0


@dataclass
class ReloadRun:
    config: ReloadConfig
    reloads: list[Reload] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    polls: PollTally = field(default_factory=PollTally)
    sent: int = 0
    completed: int = 0
    failed_requests: int = 0
    request_errors: list[str] = field(default_factory=list)
    server_death: str | None = None
    # Set when every failed request was Triton 2.51's own defect (``known_defects``).
    upstream_defect: str | None = None
    server_log_tail: str = ""  # kept when the run failed
    seconds: float = 0.0

    @property
    def false_windows(self) -> list[Window]:
        return [w for w in self.windows if w.server_completed == 0 and w.client_completed > 0]

    @property
    def failed_reloads(self) -> list[Reload]:
        return [r for r in self.reloads if not r.ok]

    @property
    def passed(self) -> bool:
        return (
            self.failed_requests == 0
            and not self.failed_reloads
            and self.server_death is None
            and len(self.reloads) >= self.config.reloads
        )

    def summary(self) -> dict[str, Any]:
        secs = sorted(r.seconds for r in self.reloads if r.ok)
        by_kind: dict[str, list[float]] = {}
        for r in self.reloads:
            by_kind.setdefault(r.kind, []).append(r.seconds)
        server = sum(w.server_completed for w in self.windows)
        client = sum(w.client_completed for w in self.windows)
        return {
            "reloads": len(self.reloads),
            "failed_reloads": len(self.failed_reloads),
            "requests_sent": self.sent,
            "requests_completed": self.completed,
            "failed_requests": self.failed_requests,
            "reload_s_median": statistics.median(secs) if secs else None,
            "reload_s_p95": secs[min(len(secs) - 1, int(0.95 * len(secs)))] if secs else None,
            "reload_s_max": secs[-1] if secs else None,
            "reload_s_median_by_kind": {k: statistics.median(v) for k, v in by_kind.items()},
            "polls": dict(self.polls.calls),
            "poll_failures": dict(self.polls.failures),
            "poll_failures_during_reload": self.polls.during_reload,
            "windows": len(self.windows),
            "false_windows": len(self.false_windows),
            "server_counted_share": server / client if client else None,
            "server_death": self.server_death,
            "upstream_defect": self.upstream_defect,
            "passed": self.passed,
            "seconds": round(self.seconds, 1),
        }


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.reloading = False
        self.reloaded_since_window = False

    def now(self) -> float:
        return time.monotonic() - self.t0


async def _poll(client: Any, model: str, every_s: float, tally: PollTally, clock: _Clock) -> None:
    """Ask for the model's statistics, metadata and config until cancelled."""
    calls = {
        "statistics": lambda: client.get_inference_statistics(model, client_timeout=5.0),
        "metadata": lambda: client.get_model_metadata(model, client_timeout=5.0),
        "config": lambda: client.get_model_config(model, client_timeout=5.0),
    }
    while True:
        for rpc, call in calls.items():
            tally.calls[rpc] += 1
            try:
                await call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure is a finding: kept with its words
                tally.failures[rpc] += 1
                tally.during_reload += clock.reloading
                if len(tally.failed) < MAX_KEPT:
                    msg = " ".join(str(exc).split())[:300]
                    tally.failed.append(f"t={clock.now():.2f}s {rpc}: {msg}")
        await asyncio.sleep(every_s)


async def _observe(
    backend: Any, gen: Any, model: str, every_s: float, run: ReloadRun, clock: _Clock
) -> None:
    """The agent's observation, every ``every_s``, beside the client's window."""
    gen.window()
    await backend.observe()  # the baseline
    while True:
        await asyncio.sleep(every_s)
        windows = {w.info.name: w.window for w in await backend.observe()}
        cw = gen.window()
        sw = windows.get(model)
        run.windows.append(
            Window(
                end_s=round(clock.now(), 3),
                server_completed=sw.completed if sw is not None else 0,
                client_completed=cw.completed,
                client_errors=cw.errors,
                client_p99_ms=cw.latency_p99_ms,
                reloading=clock.reloading or clock.reloaded_since_window,
            )
        )
        clock.reloaded_since_window = clock.reloading


async def _death(triton: Any, wait_s: float) -> str | None:
    """How the server ended (exit code, log tail), waiting up to ``wait_s`` for a process
    whose connections just dropped to be seen gone; ``None`` while it runs."""
    end = time.monotonic() + wait_s
    while True:
        death: str | None = triton.death_note(5)
        if death or time.monotonic() >= end:
            return death
        await asyncio.sleep(0.2)


async def _apply(backend: Any, model: str, knobs: Knobs, timeout_s: float = 120.0) -> str:
    """Apply as the agent does (re-applying while in progress); '' once read back in
    force, else why not."""
    outcome = await backend.apply(model, knobs)
    end = time.monotonic() + timeout_s
    while outcome.ok and outcome.in_progress and time.monotonic() < end:
        await asyncio.sleep(0.25)
        outcome = await backend.apply(model, knobs)
    if not outcome.ok:
        return outcome.error or "apply failed"
    if outcome.in_progress:
        return f"still in progress after {timeout_s:.0f} s"
    info = next((i for i in await backend.list_models() if i.name == model), None)
    if info is None or info.knobs != knobs:
        return f"read back {info.knobs if info else 'nothing'}, not {knobs}"
    return ""


async def run_reloads(
    cfg: ReloadConfig, workdir: Path, progress: Any = None, triton: Any = None
) -> ReloadRun:
    """Start a Triton serving ``cfg.model`` in ``workdir`` (or use ``triton``, a started
    ``LocalTriton``), then change its knobs ``cfg.reloads`` times under load."""
    from dnnscaler.triton.demo_models import write_repository
    from dnnscaler.triton.launcher import LocalTriton

    if triton is None:
        repo = workdir / "models"
        write_repository(repo, [cfg.model])
        async with LocalTriton(
            repo, [cfg.model], workdir=workdir / "triton", trace=cfg.tracing
        ) as server:
            return await _run(cfg, server, progress)
    return await _run(cfg, triton, progress)


async def _run(cfg: ReloadConfig, triton: Any, progress: Any) -> ReloadRun:
    import tritonclient.grpc.aio as grpcclient

    from dnnscaler.agents.backend import BackendUnavailable
    from dnnscaler.agents.backends.triton import TritonBackend
    from dnnscaler.loadgen.generator import LoadGen

    run = ReloadRun(cfg)
    backend = TritonBackend(
        triton.grpc_url, triton.metrics_url, trace_file="auto" if cfg.tracing else None
    )
    poller = grpcclient.InferenceServerClient(triton.grpc_url)
    await backend.start()
    clock = _Clock()
    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    try:
        info = next(i for i in await backend.list_models() if i.name == cfg.model)
        changes = cycle(info.limits.max_batch_size)
        first = await _apply(backend, cfg.model, changes[-1][1])
        if first:
            raise RuntimeError(f"{cfg.model}: the start config {changes[-1][1]}: {first}")
        duration = 60.0 + cfg.reloads * 20.0
        async with LoadGen(
            triton.grpc_url,
            cfg.model,
            rate_rps=cfg.rate_rps,
            seed=cfg.seed,
            max_duration_s=duration,
            max_requests=10**9,
        ) as gen:
            clock.t0 = time.monotonic()
            tasks = [
                asyncio.create_task(_poll(poller, cfg.model, cfg.poll_s, run.polls, clock)),
                asyncio.create_task(_observe(backend, gen, cfg.model, cfg.observe_s, run, clock)),
            ]
            await asyncio.sleep(cfg.dwell_s)
            for i in range(cfg.reloads):
                kind, knobs = changes[i % len(changes)]
                t = clock.now()
                clock.reloading = clock.reloaded_since_window = True
                unreachable = ""
                try:
                    error = await _apply(backend, cfg.model, knobs)
                except BackendUnavailable as exc:  # the server went away mid-reload
                    error = unreachable = f"server unreachable: {exc}"
                finally:
                    clock.reloading = False
                run.reloads.append(
                    Reload(i + 1, kind, knobs, round(t, 3), clock.now() - t, not error, error)
                )
                death = await _death(triton, wait_s=5.0 if unreachable else 0.0)
                if death or unreachable:
                    run.server_death = death or f"reload {i + 1}: {unreachable}"
                    break
                if error:
                    log.warning(
                        "bench.reload_failed", model=cfg.model, knobs=str(knobs), error=error
                    )
                if progress is not None and (i + 1) % 10 == 0:
                    progress(
                        f"{i + 1}/{cfg.reloads} reloads, {gen.snapshot().errors} failed"
                        " requests so far"
                    )
                await asyncio.sleep(cfg.dwell_s)
            await asyncio.sleep(cfg.observe_s)  # the last window sees the last config serve
        # After the generator drained: every request sent has its outcome.
        snap = gen.snapshot()
        run.sent, run.completed, run.failed_requests = snap.sent, snap.completed, snap.errors
        run.request_errors = [str(e) for e in gen.errors]
        run.upstream_defect = gen.upstream_defect()
        if not run.passed:
            run.server_log_tail = triton.log_tail(30)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await poller.close()
        await backend.close()
        run.seconds = time.monotonic() - start
    return run


# -- report ---------------------------------------------------------------------------------
def write_reloads_report(run: ReloadRun, out: Path, console: Console | None = None) -> None:
    """Print the table, write ``reloads.json`` and ``reloads.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    s = run.summary()
    con = console or Console()
    table = Table(title=f"bench reloads: {run.config.model} at {run.config.rate_rps:g} rps")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("knob changes (full reloads)", f"{s['reloads']}"),
        ("changes not in force", f"{s['failed_reloads']}"),
        ("requests sent / completed", f"{s['requests_sent']:,} / {s['requests_completed']:,}"),
        ("failed requests", f"{s['failed_requests']}"),
        ("reload s: median / p95 / max", _secs(s)),
        *(
            (f"  median s, {k}", f"{v:.2f}")
            for k, v in sorted(s["reload_s_median_by_kind"].items())
        ),
        *(
            (
                f"{rpc} calls / unanswered",
                f"{s['polls'].get(rpc, 0):,} / {s['poll_failures'].get(rpc, 0)}",
            )
            for rpc in POLLED
        ),
        (
            "agent windows / false (0 counted, client saw some)",
            f"{s['windows']} / {s['false_windows']}",
        ),
        (
            "requests the agent's windows counted / the client's",
            f"{s['server_counted_share']:.3f}" if s["server_counted_share"] is not None else "-",
        ),
        ("server death", s["server_death"] or "none"),
        ("verdict", "PASS" if s["passed"] else "FAIL"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    con.print(table)
    for e in run.request_errors[:10]:
        con.print(f"  failed request {e}")
    for e in run.polls.failed[:10]:
        con.print(f"  unanswered {e}")
    for r in run.failed_reloads[:10]:
        con.print(f"  change {r.index} ({r.kind}) to {r.knobs}: {r.error}")
    doc = {
        "config": asdict(run.config),
        "summary": s,
        "request_errors": run.request_errors,
        "unanswered_polls": run.polls.failed,
        "server_log_tail": run.server_log_tail,
        "reloads": [asdict(r) for r in run.reloads],
        "windows": [asdict(w) for w in run.windows],
    }
    (out / "reloads.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    _plot(run, out / "reloads.png")


def _secs(s: dict[str, Any]) -> str:
    if s["reload_s_median"] is None:
        return "-"
    return f"{s['reload_s_median']:.2f} / {s['reload_s_p95']:.2f} / {s['reload_s_max']:.2f}"


def _plot(run: ReloadRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    t = [w.end_s for w in run.windows]
    ax1.plot(t, [w.client_completed for w in run.windows], lw=0.8, label="client: completed/s")
    ax1.plot(t, [w.server_completed for w in run.windows], lw=0.8, label="agent: completed/s")
    errs = [(w.end_s, w.client_errors) for w in run.windows if w.client_errors]
    if errs:
        ax1.scatter(*zip(*errs, strict=True), color="red", marker="x", label="failed requests")
    ax1.set_ylabel("requests per window")
    ax1.legend(loc="lower right", fontsize=8)
    p99 = [(w.end_s, w.client_p99_ms) for w in run.windows if w.client_p99_ms is not None]
    if p99:
        ax2.plot(*zip(*p99, strict=True), lw=0.8, color="tab:purple", label="client p99 (ms)")
    ax2.scatter(
        [r.start_s for r in run.reloads],
        [1000 * r.seconds for r in run.reloads],
        s=6,
        color="tab:orange",
        label="reload duration (ms), at its start",
    )
    ax2.set_yscale("log")
    ax2.set_xlabel("seconds since the load started")
    ax2.legend(loc="upper right", fontsize=8)
    s = run.summary()
    fig.suptitle(
        f"bench reloads: {s['reloads']} knob changes on {run.config.model} at"
        f" {run.config.rate_rps:g} rps, {s['failed_requests']} failed requests"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command ------------------------------------------------------------------------------
def add_reloads_parser(sub: Any) -> None:
    """``bench reloads``'s options (called by ``bench.cli.register``)."""
    d = ReloadConfig()
    p = sub.add_parser("reloads", help="knob changes on a real Triton under load, counted")
    p.add_argument("--model", default=d.model, help="a demo model")
    p.add_argument("--reloads", type=int, default=d.reloads, help="knob changes to make")
    p.add_argument("--rate-rps", type=float, default=d.rate_rps, help="offered load")
    p.add_argument("--dwell-s", type=float, default=d.dwell_s, help="served between changes")
    p.add_argument("--poll-s", type=float, default=d.poll_s)
    p.add_argument("--no-tracing", action="store_true", help="the agent reads no traces")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=Path("bench-results/reloads"))
    p.set_defaults(func=cmd_reloads)


def cmd_reloads(args: argparse.Namespace) -> int:
    from dnnscaler.triton.demo_models import DEMO_MODELS

    con = Console(width=max(Console().width, 120))
    problems = []
    if args.model not in DEMO_MODELS:
        problems.append(f"--model: {args.model!r} is not a demo model ({', '.join(DEMO_MODELS)})")
    if args.reloads < 1:
        problems.append("--reloads must be >= 1")
    if not args.rate_rps > 0:
        problems.append("--rate-rps must be > 0")
    if args.dwell_s < 0 or not args.poll_s > 0:
        problems.append("--dwell-s must be >= 0 and --poll-s > 0")
    if problems:
        for p in problems:
            con.print(f"[red]error:[/red] {p}")
        return 2
    cfg = ReloadConfig(
        model=args.model,
        reloads=args.reloads,
        rate_rps=args.rate_rps,
        dwell_s=args.dwell_s,
        poll_s=args.poll_s,
        tracing=not args.no_tracing,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="dnnscaler-reloads-") as tmp:
        run = asyncio.run(run_reloads(cfg, Path(tmp), progress=con.print))
    write_reloads_report(run, args.out, console=con)
    con.print(f"wrote {args.out / 'reloads.json'} and {args.out / 'reloads.png'}")
    return 0 if run.passed else 1
