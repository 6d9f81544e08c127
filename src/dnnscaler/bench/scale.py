"""``dnnscaler bench scale``: how many agents one controller process holds at 1 Hz.

A real controller (``dnnscaler controller``, its own process, a SQLite state file) on
loopback; simulated agents (``bench.scale_agents``) in several worker processes, each agent
on its own gRPC stream. The fleet is ramped in stages. Each stage: grow to N agents, wait
until all are welcomed, settle, measure a window, then pause the reports and let the
controller drain, so that every report sent in the stage is either decided or lost.

Per stage: agents held, reports/s decided, p99 report->decision latency (from the agent's
send stamp, read from the controller's histogram, interpolated in its bucket), the
controller's CPU (cores, from /proc) and RSS, and reports lost (sent minus decided). The
knee is the last stage that meets the target (p99 and 0 lost with every agent held).
The generators share the host's cores with the controller: their CPU is reported too.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from dnnscaler.core.logging import get_logger

log = get_logger(__name__)

METRICS = (
    "dnnscaler_reports_total",
    "dnnscaler_reports_superseded_total",
    "dnnscaler_report_age_at_decision_seconds_bucket",
    "dnnscaler_report_age_at_decision_seconds_count",
    "dnnscaler_knob_updates_total",
)


@dataclass(frozen=True)
class ScaleConfig:
    stages: tuple[int, ...] = (100, 500, 1000, 2000, 3000, 5000, 7500, 10000)
    models: int = 3
    workers: int = 3
    interval_s: float = 1.0
    settle_s: float = 10.0
    measure_s: float = 20.0
    connect_timeout_s: float = 120.0
    drain_timeout_s: float = 30.0
    p99_target_ms: float = 100.0
    policy: str = "dnnscaler"
    seed: int = 0


@dataclass
class StageResult:
    agents: int
    agents_held: int
    connect_s: float
    reports_sent: int
    reports_decided: int
    reports_superseded: int
    reports_lost: int
    reports_per_s: float
    offered_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    controller_cpu_cores: float
    generators_cpu_cores: float
    controller_rss_mb: float
    controller_rss_max_mb: float
    knob_updates: int
    # The host's 1-minute load average at the stage's end: the box is shared.
    host_load_1m: float = 0.0
    meets_target: bool = False


@dataclass
class ScaleResult:
    config: ScaleConfig
    stages: list[StageResult] = field(default_factory=list)
    knee_agents: int | None = None
    broke_at: int | None = None
    host: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


# -- the processes -----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (and its reaped children) from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return math.nan


class _Worker:
    """One generator process and its latest counters."""

    def __init__(self, target: str, prefix: str, cfg: ScaleConfig) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "dnnscaler.bench.scale_agents",
                "--target", target, "--prefix", prefix, "--models", str(cfg.models),
                "--interval-s", str(cfg.interval_s), "--seed", str(cfg.seed),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )  # fmt: skip
        self.counters: dict[str, Any] = {}
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, out: IO[str]) -> None:
        for line in out:
            if line.strip():
                self.counters = json.loads(line)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def poll(self) -> dict[str, Any]:
        return self.counters

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(stop=True)
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _scrape(port: int) -> dict[str, Any]:
    """The controller's counters and report-age buckets (only those names: a full scrape
    at 10k agents would cost the controller more than the window it measures)."""
    q = "&".join(f"name[]={n}" for n in METRICS)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?{q}", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, Any] = {"buckets": {}}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                out["buckets"][float(s.labels["le"])] = s.value
            elif s.name == "dnnscaler_knob_updates_total":
                out[s.name] = out.get(s.name, 0.0) + s.value
            else:
                out[s.name] = s.value
    return out


def bucket_quantile(q: float, lo: dict[float, float], hi: dict[float, float]) -> float | None:
    """The q-quantile (seconds) of the observations between two scrapes of a cumulative
    histogram, interpolated linearly inside its bucket (as Prometheus does); None if none."""
    edges = sorted(hi)
    counts = [hi[e] - lo.get(e, 0.0) for e in edges]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_edge, prev_count = 0.0, 0.0
    for edge, count in zip(edges, counts, strict=True):
        if count >= rank:
            if math.isinf(edge):
                return prev_edge  # above the last finite bucket: its edge, a lower bound
            span = count - prev_count
            frac = (rank - prev_count) / span if span > 0 else 1.0
            return prev_edge + (edge - prev_edge) * frac
        prev_edge, prev_count = edge, count
    return None


# -- the run ----------------------------------------------------------------------------
def run_scale(
    cfg: ScaleConfig, workdir: Path, progress: Callable[[str], None] | None = None
) -> ScaleResult:
    """Ramp the fleet through ``cfg.stages`` against one controller; see the module doc."""
    say = progress or (lambda _m: None)
    port, mport = _free_port(), _free_port()
    target = f"127.0.0.1:{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    ctl_log = open(workdir / "controller.log", "w")  # noqa: SIM115 (closed below)
    ctl = subprocess.Popen(
        [
            sys.executable, "-m", "dnnscaler.cli", "--log-json", "controller",
            "--listen", target, "--insecure", "--metrics-port", str(mport),
            "--state-path", str(workdir / "controller.db"), "--policy", cfg.policy,
            "--stale-after-s", "30",
        ],
        stdout=ctl_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    workers: list[_Worker] = []
    res = ScaleResult(
        config=cfg,
        host={"cpus": os.cpu_count(), "controller_pid": ctl.pid, "python": sys.version.split()[0]},
    )
    t_start = time.monotonic()
    try:
        _wait_metrics(mport, ctl)
        workers = [_Worker(target, f"w{i}", cfg) for i in range(cfg.workers)]
        for n in cfg.stages:
            say(f"stage {n} agents")
            st = _stage(n, cfg, ctl, mport, workers)
            st.meets_target = (
                st.agents_held == n
                and st.reports_lost == 0
                and st.p99_ms is not None
                and st.p99_ms <= cfg.p99_target_ms
            )
            res.stages.append(st)
            say(
                f"stage {n}: held {st.agents_held}, {st.reports_per_s:.0f} reports/s,"
                f" p99 {st.p99_ms} ms, lost {st.reports_lost}, ctl CPU"
                f" {st.controller_cpu_cores:.2f}"
            )
            if not st.meets_target:
                res.broke_at = n
                if st.agents_held < n or (st.p99_ms or 0) > 10 * cfg.p99_target_ms:
                    break  # far past the knee: the next stage would only measure a pile-up
    finally:
        for w in workers:
            w.stop()
        ctl.terminate()
        try:
            ctl.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ctl.kill()
            ctl.wait()
        ctl_log.close()
    good = [s.agents for s in res.stages if s.meets_target]
    res.knee_agents = max(good) if good else None
    res.elapsed_s = round(time.monotonic() - t_start, 1)
    return res


def _wait_metrics(mport: int, ctl: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ctl.poll() is not None:
            raise RuntimeError(f"the controller exited with {ctl.returncode} before serving")
        try:
            _scrape(mport)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the controller's metrics port did not answer in 60 s")


def _sum(workers: Sequence[_Worker], key: str) -> int:
    return sum(int(w.poll().get(key, 0)) for w in workers)


def _stage(
    n: int, cfg: ScaleConfig, ctl: subprocess.Popen[bytes], mport: int, workers: list[_Worker]
) -> StageResult:
    share = [n // len(workers) + (1 if i < n % len(workers) else 0) for i in range(len(workers))]
    before = _scrape(mport)
    sent0 = _sum(workers, "sent")
    for w, k in zip(workers, share, strict=True):
        w.send(agents=k, pause=False)
    t0 = time.monotonic()
    while _sum(workers, "connected") < n and time.monotonic() - t0 < cfg.connect_timeout_s:
        if ctl.poll() is not None:
            raise RuntimeError(f"the controller exited with {ctl.returncode}")
        time.sleep(0.5)
    connect_s = time.monotonic() - t0
    time.sleep(cfg.settle_s)
    # The measured window.
    m0 = _scrape(mport)
    c0, g0 = _cpu_s(ctl.pid), sum(_cpu_s(w.proc.pid) for w in workers)
    s0 = _sum(workers, "sent")
    t1 = time.monotonic()
    rss_max = 0.0
    while time.monotonic() - t1 < cfg.measure_s:
        time.sleep(1.0)
        rss_max = max(rss_max, _rss_mb(ctl.pid))
    dt = time.monotonic() - t1
    c1, g1 = _cpu_s(ctl.pid), sum(_cpu_s(w.proc.pid) for w in workers)
    m1 = _scrape(mport)
    s1 = _sum(workers, "sent")
    held = _sum(workers, "connected")
    rss = _rss_mb(ctl.pid)
    # Pause and drain: every report sent in this stage is then decided, superseded or lost.
    for w in workers:
        w.send(pause=True)
    time.sleep(cfg.interval_s + 1.2)  # the last sends, and a counter line after them
    sent1 = _sum(workers, "sent")
    deadline = time.monotonic() + cfg.drain_timeout_s
    last = _scrape(mport)
    while time.monotonic() < deadline:
        done = last.get("dnnscaler_reports_total", 0.0) - before.get("dnnscaler_reports_total", 0)
        if done >= sent1 - sent0:
            break
        time.sleep(1.0)
        now = _scrape(mport)
        if now.get("dnnscaler_reports_total") == last.get("dnnscaler_reports_total") and (done > 0):
            break  # nothing more arrives: the rest is lost
        last = now

    def delta(a: dict[str, Any], b: dict[str, Any], k: str) -> float:
        return float(b.get(k, 0.0)) - float(a.get(k, 0.0))

    decided = int(delta(before, last, "dnnscaler_reports_total"))
    superseded = int(delta(before, last, "dnnscaler_reports_superseded_total"))
    p50 = bucket_quantile(0.50, m0["buckets"], m1["buckets"])
    p99 = bucket_quantile(0.99, m0["buckets"], m1["buckets"])
    return StageResult(
        agents=n,
        agents_held=held,
        connect_s=round(connect_s, 1),
        reports_sent=sent1 - sent0,
        reports_decided=decided,
        reports_superseded=superseded,
        reports_lost=max(0, sent1 - sent0 - decided),
        reports_per_s=round(delta(m0, m1, "dnnscaler_reports_total") / dt, 1),
        offered_per_s=round((s1 - s0) / dt, 1),
        p50_ms=None if p50 is None else round(1000 * p50, 1),
        p99_ms=None if p99 is None else round(1000 * p99, 1),
        controller_cpu_cores=round((c1 - c0) / dt, 2),
        generators_cpu_cores=round((g1 - g0) / dt, 2),
        controller_rss_mb=round(rss, 1),
        controller_rss_max_mb=round(rss_max, 1),
        knob_updates=int(delta(before, last, "dnnscaler_knob_updates_total")),
        host_load_1m=round(os.getloadavg()[0], 2),
    )


# -- the report -------------------------------------------------------------------------
def scale_table(res: ScaleResult) -> Table:
    cfg = res.config
    t = Table(
        title=f"bench scale: {cfg.models} models/agent at {1 / cfg.interval_s:g} Hz,"
        f" target p99 <= {cfg.p99_target_ms:g} ms and 0 lost"
    )
    for col in (
        "agents",
        "held",
        "offered/s",
        "decided/s",
        "p50 ms",
        "p99 ms",
        "lost",
        "superseded",
        "ctl CPU",
        "gen CPU",
        "ctl RSS MB",
        "updates",
        "load 1m",
        "ok",
    ):
        t.add_column(col, justify="right")
    for s in res.stages:
        t.add_row(
            str(s.agents),
            str(s.agents_held),
            f"{s.offered_per_s:.0f}",
            f"{s.reports_per_s:.0f}",
            "-" if s.p50_ms is None else f"{s.p50_ms:.1f}",
            "-" if s.p99_ms is None else f"{s.p99_ms:.1f}",
            str(s.reports_lost),
            str(s.reports_superseded),
            f"{s.controller_cpu_cores:.2f}",
            f"{s.generators_cpu_cores:.2f}",
            f"{s.controller_rss_max_mb:.0f}",
            str(s.knob_updates),
            f"{s.host_load_1m:.1f}",
            "yes" if s.meets_target else "NO",
        )
    t.caption = (
        f"knee: {res.knee_agents} agents" if res.knee_agents else "knee: no stage met the target"
    ) + (f"; broke at {res.broke_at}" if res.broke_at else "")
    return t


def write_scale_report(res: ScaleResult, out: Path, console: Console | None = None) -> None:
    """``scale.json``, ``scale.png`` (the curve and its knee) and the printed table."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "bench": "scale",
        "config": asdict(res.config),
        "host": res.host,
        "elapsed_s": res.elapsed_s,
        "knee_agents": res.knee_agents,
        "broke_at": res.broke_at,
        "stages": [asdict(s) for s in res.stages],
    }
    (out / "scale.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(res, out / "scale.png")
    (console or Console()).print(scale_table(res))


def _plot(res: ScaleResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [s.agents for s in res.stages]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    ax1.plot(xs, [s.offered_per_s for s in res.stages], "o--", label="offered reports/s")
    ax1.plot(xs, [s.reports_per_s for s in res.stages], "o-", label="decided reports/s")
    ax1.set_ylabel("reports/s")
    ax1b = ax1.twinx()
    ax1b.plot(xs, [s.controller_cpu_cores for s in res.stages], "s:", color="grey")
    ax1b.set_ylabel("controller CPU (cores)", color="grey")
    ax1.legend(loc="upper left")
    p99 = [math.nan if s.p99_ms is None else s.p99_ms for s in res.stages]
    ax2.plot(xs, p99, "o-", color="C3", label="p99 report->decision")
    ax2.axhline(res.config.p99_target_ms, color="C3", ls=":", label="target")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms")
    ax2.set_xlabel("agents")
    if res.knee_agents:
        for ax in (ax1, ax2):
            ax.axvline(res.knee_agents, color="green", ls="--", alpha=0.6)
        ax2.annotate(f"knee {res.knee_agents}", (res.knee_agents, res.config.p99_target_ms))
    ax2.legend(loc="upper left")
    fig.suptitle("dnnscaler bench scale: one controller process")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale_workdir(out: Path) -> Path:
    """Where the controller's state file and log go: a fresh folder under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=out))


# -- the command --------------------------------------------------------------------------
def add_scale_parser(sub: Any) -> None:
    """``bench scale``'s options (called by ``bench.cli.register``)."""
    p = sub.add_parser("scale", help="agents held by one controller process at 1 Hz")
    d = ScaleConfig()
    p.add_argument(
        "--stages",
        default=",".join(map(str, d.stages)),
        help="comma-separated agent counts, ramped in this order",
    )
    p.add_argument("--models", type=int, default=d.models, help="models per agent")
    p.add_argument("--workers", type=int, default=d.workers, help="generator processes")
    p.add_argument("--interval-s", type=float, default=d.interval_s, help="report interval")
    p.add_argument("--settle-s", type=float, default=d.settle_s)
    p.add_argument("--measure-s", type=float, default=d.measure_s)
    p.add_argument("--p99-target-ms", type=float, default=d.p99_target_ms)
    p.add_argument("--policy", default=d.policy, help="the controller's policy for the models")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=Path("bench-results/scale"))
    p.set_defaults(func=cmd_scale)


def cmd_scale(args: Any) -> int:
    con = Console(width=max(Console().width, 140))
    try:
        stages = tuple(int(x) for x in args.stages.split(",") if x.strip())
        if not stages or min(stages) < 1 or args.models < 1 or args.workers < 1:
            raise ValueError("--stages, --models and --workers must be >= 1")
        if not (args.interval_s > 0 and args.measure_s > 0 and args.settle_s >= 0):
            raise ValueError("--interval-s and --measure-s must be > 0, --settle-s >= 0")
    except ValueError as exc:
        con.print(f"[red]error:[/red] {exc}")
        return 2
    cfg = ScaleConfig(
        stages=stages,
        models=args.models,
        workers=args.workers,
        interval_s=args.interval_s,
        settle_s=args.settle_s,
        measure_s=args.measure_s,
        p99_target_ms=args.p99_target_ms,
        policy=args.policy,
        seed=args.seed,
    )
    res = run_scale(cfg, scale_workdir(args.out), progress=lambda m: con.print(m))
    write_scale_report(res, args.out, console=con)
    con.print(f"wrote {args.out / 'scale.json'} and {args.out / 'scale.png'}")
    return 0
