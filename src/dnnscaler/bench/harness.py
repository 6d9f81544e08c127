"""The benchmark protocol on a local real inference server, whichever its kind: the run,
its report and its command line; the server itself comes from a ``ServerAdapter``.

Per model, in one run: an oracle sweep over a reduced grid (capacity of each config by
bisection on the open-loop Poisson rate, p-th percentile measured on the client side), then a
staircase per policy with the real controller and agent in this process over loopback gRPC.
The sweep and every staircase run get a server of their own, started fresh, so that a server
that crashed or hung under overload cannot spoil the next run; a failed run is recorded
(capacity 0, its error) and the bench goes on. Figures are those of ``docs/results``: online
capacity, ratio to oracle / aimd / paper, violation rate, settle windows, knob changes,
failed requests.

The load generator shares the box with the server, so absolute numbers depend on the
machine; ratios measured side by side in one run are what the report quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dnnscaler.bench import metrics as m
from dnnscaler.bench.adapter import H, ServerAdapter
from dnnscaler.bench.config import DEFAULT_SLO_MS, POLICIES, BenchConfig
from dnnscaler.bench.probes import model_info
from dnnscaler.bench.records import BenchRecord, with_ratios
from dnnscaler.bench.retries import describe_error, run_error, with_retries
from dnnscaler.bench.staircase import OnlineRun, run_staircase
from dnnscaler.bench.sweep import ConfigCapacity, oracle_sweep
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs, Slo

log = get_logger(__name__)


@dataclass
class BenchResult:
    records: list[BenchRecord]
    oracles: dict[str, list[ConfigCapacity]]
    runs: dict[tuple[str, str], OnlineRun]
    seconds: float
    # One entry per failed oracle sweep or staircase run: model, policy (None for an oracle
    # sweep), stage ("oracle" or "staircase") and the error.
    errors: list[dict[str, Any]] = field(default_factory=list)


# -- records ------------------------------------------------------------------------------


def record_for(
    model: str,
    run: OnlineRun,
    oracle: ConfigCapacity,
    slo: Slo,
    cfg: BenchConfig,
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
        steps=m.step_stats(cfg.staircase, run.windows),
    )


def failed_record(
    model: str,
    policy: str,
    start_knobs: Knobs,
    oracle: ConfigCapacity,
    slo: Slo,
    cfg: BenchConfig,
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


# -- the run ------------------------------------------------------------------------------


async def run_bench(
    adapter: ServerAdapter[H],
    cfg: BenchConfig,
    progress: Callable[[str], None] = lambda s: None,
    on_update: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """Every model's oracle sweep, then its staircase per policy; each on a server of its
    own, started fresh (a crash cannot leak into the next run; every policy starts from the
    same state). A sweep or run that raises is logged and recorded, and the bench goes on:
    a failed run gets a record with capacity 0 and its ``error``; a failed sweep skips the
    model's policies. ``on_update`` gets the result so far after each run and failure."""
    t_start = time.monotonic()
    records: list[BenchRecord] = []
    oracles: dict[str, list[ConfigCapacity]] = {}
    runs: dict[tuple[str, str], OnlineRun] = {}
    errors: list[dict[str, Any]] = []

    def snapshot() -> BenchResult:
        return BenchResult(
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
        adapter.write_models(repo, cfg.models)
        n_servers = 0

        def workdir(tag: str) -> Path:
            nonlocal n_servers
            n_servers += 1
            return Path(tmp) / f"{adapter.kind}-{n_servers:02d}-{tag}"

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
                async with adapter.serve(repo, [model], workdir(f"{model}-{pol}-{k}")) as srv:
                    run = await run_staircase(
                        adapter,
                        srv,
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
                async with adapter.serve(repo, [model], workdir(f"{model}-oracle")) as srv:
                    default_knobs = (await model_info(srv.setup, model)).knobs
                    sweep = await oracle_sweep(adapter, srv, model, slo, cfg, progress)
                if not sweep:
                    raise ValueError(f"{model}: no config of the grid is within the model's limits")
            except Exception as exc:
                failed(model, None, "oracle", exc)
                update()
                continue
            oracles[model] = sweep
            best = max(sweep, key=lambda c: c.capacity_rps)
            if best.capacity_rps <= 0:
                # Staircases at a share of 0 rps measure nothing: say why instead.
                failed(model, None, "oracle", NoCapacityError(no_capacity(model, sweep, slo)))
                update()
                continue
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


class NoCapacityError(RuntimeError):
    """No config of the oracle's grid met the SLO at any rate the sweep probed."""


def no_capacity(model: str, sweep: list[ConfigCapacity], slo: Slo) -> str:
    """Why a model's oracle sweep found no capacity: each config's lowest probe, and what
    to change (on a slowed or busy box an SLO in ms can sit under the model's tail even at
    a few requests per second)."""
    tried = []
    for c in sweep:
        low = min(c.probes, key=lambda p: p.rate_rps, default=None)
        if low is None:
            continue
        tail = (
            "no reply" if low.latency_ms is None else f"p{slo.percentile:g} {low.latency_ms:.1f} ms"
        )
        errors = f", {low.errors} errors" if low.errors else ""
        knobs = f"b{c.knobs.max_batch_size} n{c.knobs.instances}"
        tried.append(f"{knobs}: {tail}{errors} at {low.rate_rps:.0f} rps")
    bound = f"p{slo.percentile:g} <= {slo.latency_ms:g} ms"
    return (
        f"{model}: no config of the grid met the SLO ({bound}) at any rate probed, so no"
        f" staircase was run; lowest probes: {'; '.join(tried) or 'none'}. The box is slower"
        " than the SLO allows: loosen --slo-ms or widen --grid"
    )


# -- the report ---------------------------------------------------------------------------


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


def write_bench_report(
    kind: str,
    result: BenchResult,
    cfg: BenchConfig,
    out: Path,
    console: Any,
    *,
    complete: bool,
) -> Path:
    """``results.json`` (its ``bench`` is ``kind``) and the rest of the report; a partial one
    (``complete=False``, after each run) skips the tables on the console and the PNGs."""
    from dnnscaler.bench.report import write_report

    return write_report(
        result.records,
        out,
        bench=kind,
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


# -- command line -------------------------------------------------------------------------


def quick_config(models: Sequence[str]) -> BenchConfig:
    """A short run for smoke tests: tiny grid, short probes, coarse staircase."""
    return replace(
        BenchConfig(models=tuple(models)),
        batch_grid=(1, 8),
        instance_grid=(1, 2),
        probe_s=2.0,
        warm_s=0.5,
        bisect_iters=3,
        staircase=m.Staircase(
            start_frac=0.3, step_frac=0.3, max_frac=0.9, step_windows=4, min_half_requests=0
        ),
    )


def add_bench_parser(sub: Any, kind: str, help: str) -> argparse.ArgumentParser:
    """Add ``bench <kind>`` with the protocol's options to the ``bench`` group; the caller
    sets its ``func``."""
    p: argparse.ArgumentParser = sub.add_parser(kind, help=help)
    p.add_argument("--models", default=",".join(BenchConfig().models))
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--out", type=Path, default=Path(f"out/bench-{kind}"))
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
        default=BenchConfig.retries,
        help="repeat a run whose server crashed or stalled up to this many times (default 1)",
    )
    return p


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


def _names(kind: str, arg: str, valid: Sequence[str], option: str) -> tuple[str, ...] | None:
    """Comma-separated names checked against ``valid``; prints the error and gives None."""
    names = tuple(x for x in arg.split(",") if x)
    unknown = [x for x in names if x not in valid]
    if unknown or not names:
        print(
            f"bench {kind}: {option}: unknown {unknown}; valid: {', '.join(valid)}",
            file=sys.stderr,
        )
        return None
    return names


def _usage(kind: str, option: str, message: str) -> int:
    print(f"bench {kind}: {option}: {message}", file=sys.stderr)
    return 2


def config_from_args(args: Any, adapter: ServerAdapter[Any]) -> BenchConfig | int:
    """The bench config the options ask for, or exit code 2 after printing what is wrong."""
    kind = adapter.kind
    models = _names(kind, args.models, adapter.models, "--models")
    policies = _names(kind, args.policies, POLICIES, "--policies")
    if models is None or policies is None:
        return 2
    cfg = quick_config(models) if args.quick else BenchConfig(models=models)
    if args.grid is not None:
        try:
            batch_grid, instance_grid = parse_grid(args.grid)
        except ValueError as exc:
            return _usage(kind, "--grid", str(exc))
        cfg = replace(cfg, batch_grid=batch_grid, instance_grid=instance_grid)
    step_frac = getattr(args, "step_frac", None)
    if step_frac is not None:
        if not 0 < step_frac <= 1:
            return _usage(kind, "--step-frac", f"must be in (0, 1], got {step_frac:g}")
        cfg = replace(cfg, staircase=replace(cfg.staircase, step_frac=step_frac))
    step_windows = getattr(args, "step_windows", None)
    if step_windows is not None:
        if step_windows < 1:
            return _usage(kind, "--step-windows", f"must be at least 1, got {step_windows}")
        cfg = replace(cfg, staircase=replace(cfg.staircase, step_windows=step_windows))
    retries = getattr(args, "retries", BenchConfig.retries)
    if retries < 0:
        return _usage(kind, "--retries", f"must be at least 0, got {retries}")
    cfg = replace(cfg, retries=retries)
    slo_ms = {
        mm: (args.slo_ms if args.slo_ms is not None else DEFAULT_SLO_MS.get(mm, 60.0))
        for mm in models
    }
    Slo(latency_ms=min(slo_ms.values()), percentile=args.percentile)  # validates, names the field
    return replace(
        cfg, policies=policies, percentile=args.percentile, seed=args.seed, slo_ms=slo_ms
    )


def run_cli(adapter: ServerAdapter[Any], args: Any) -> int:
    """``bench <kind>``: run the bench; 0 when every sweep and run finished, 1 when some
    failed (the report then lists them), 2 on a bad option."""
    from rich.console import Console

    cfg = config_from_args(args, adapter)
    if isinstance(cfg, int):
        return cfg
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)

    def partial(res: BenchResult) -> None:
        write_bench_report(adapter.kind, res, cfg, args.out, console, complete=False)

    result = asyncio.run(
        run_bench(adapter, cfg, progress=lambda s: console.log(s, markup=False), on_update=partial)
    )
    path = write_bench_report(adapter.kind, result, cfg, args.out, console, complete=True)
    for e in result.errors:
        what = e["model"] + (f" {e['policy']}" if e["policy"] else " oracle sweep")
        console.print(f"FAILED {what}: {e['error']}", style="red", markup=False, highlight=False)
    console.print(f"bench {adapter.kind}: {result.seconds:.0f} s; wrote {path}")
    return 1 if result.errors else 0
