"""``dnnscaler bench ...``: the benchmark command group (``sim`` here; real servers elsewhere)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dnnscaler.bench.reloads import add_reloads_parser
from dnnscaler.bench.replay_cli import add_replay_parser
from dnnscaler.bench.report import write_report
from dnnscaler.bench.scale import add_scale_parser
from dnnscaler.bench.sim_bench import BENCH_POLICIES, SimBenchConfig, check_policies, run_sim_bench
from dnnscaler.bench.torchserve_bench import add_torchserve_parser
from dnnscaler.bench.triton_bench import add_triton_parser
from dnnscaler.sim.profile import Profile, ProfileError, load_profiles, shipped_profiles


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench`` group to a top-level CLI; returns its parser so others can add to it."""
    bench = subparsers.add_parser("bench", help="run benchmarks (tables, JSON, PNG)")
    sub = bench.add_subparsers(
        dest="bench_cmd", required=True, metavar="{sim,triton,torchserve,scale,reloads,replay}"
    )
    sim = sub.add_parser("sim", help="all policies vs the oracle on simulated GPUs")
    sim.add_argument("--profiles", type=Path, help="profile file (JSON list); default: shipped")
    sim.add_argument("--models", help="comma-separated profile names (default: all)")
    sim.add_argument(
        "--policies", default=",".join(BENCH_POLICIES), help="comma-separated policies"
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--out", type=Path, default=Path("bench-results/sim"))
    sim.add_argument("--quick", action="store_true", help="short staircase (for tests)")
    sim.add_argument("--slo-ms", type=float, help="SLO for every model (default: per profile)")
    sim.add_argument("--percentile", type=float, default=99.0)
    sim.add_argument("--window-s", type=float, default=1.0, help="control window (virtual s)")
    sim.add_argument("--jobs", type=int, default=1, help="worker processes")
    sim.add_argument("--plots", default="dnnscaler", help="policies to plot time series for")
    sim.set_defaults(func=cmd_sim)
    add_triton_parser(sub)
    add_torchserve_parser(sub)
    add_scale_parser(sub)
    add_reloads_parser(sub)
    add_replay_parser(sub)
    return bench


class UsageError(ValueError):
    """A bad command-line value; the message names the option."""


def select_profiles(path: Path | None, models: str | None) -> list[Profile]:
    ps = load_profiles(path) if path else shipped_profiles()
    if not models:
        return list(ps.values())
    names = [m.strip() for m in models.split(",") if m.strip()]
    bad = [n for n in names if n not in ps]
    if bad:
        raise UsageError(f"--models: unknown model {bad[0]!r}; valid: {', '.join(ps)}")
    return [ps[n] for n in names]


def cmd_sim(args: argparse.Namespace) -> int:
    con = Console(width=max(Console().width, 150))
    try:
        profiles = select_profiles(args.profiles, args.models)
        policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
        try:
            check_policies(policies)
        except ValueError as exc:
            raise UsageError(f"--policies: {exc}") from None
        kw = dict(
            policies=policies,
            seed=args.seed,
            window_s=args.window_s,
            slo_ms=args.slo_ms,
            percentile=args.percentile,
        )
        cfg = SimBenchConfig.quick(**kw) if args.quick else SimBenchConfig(**kw)
        cfg.slo_for(profiles[0])  # validates --slo-ms / --percentile
    except (UsageError, ProfileError, ValueError) as exc:
        con.print(f"[red]error:[/red] {exc}")
        return 2
    t0 = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=con,
        transient=True,
    ) as prog:
        task = prog.add_task("bench sim", total=1)

        def tick(phase: str, done: int, total: int) -> None:
            prog.update(task, description=f"bench sim: {phase}", completed=done, total=total)

        res = run_sim_bench(profiles, cfg, jobs=max(1, args.jobs), progress=tick)
    plots = {p.strip() for p in args.plots.split(",") if p.strip()}
    series = {k: v for k, v in res.staircases.items() if k[1] in plots}
    elapsed = time.perf_counter() - t0
    write_report(
        res.records,
        args.out,
        bench="sim",
        meta={
            "seed": args.seed,
            "quick": bool(args.quick),
            "jobs": args.jobs,
            "elapsed_s": round(elapsed, 1),
            "profiles": len(profiles),
            "oracle_probes": sum(o.full.probes + o.half.probes for o in res.oracles.values()),
        },
        timeseries=series,
        console=con,
    )
    con.print(f"bench sim: {len(profiles)} models x {len(policies)} policies in {elapsed:.1f} s")
    con.print(f"wrote {args.out / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m dnnscaler.bench.cli sim ...``)."""
    parser = argparse.ArgumentParser(prog="dnnscaler")
    sub = parser.add_subparsers(dest="cmd", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
