"""Benchmark reports: a rich table per model, ``results.json`` and PNG plots.

Shared by every benchmark (sim, real servers): give it ``BenchRecord``s and an output folder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dnnscaler.bench.online import WindowRecord
from dnnscaler.bench.records import BenchRecord
from dnnscaler.core.types import Knobs


def fmt_knobs(k: Knobs) -> str:
    d = f" d={k.queue_delay_us}us" if k.queue_delay_us else ""
    return f"b={k.max_batch_size} n={k.instances}{d}"


def _ratio(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def _viol(r: BenchRecord) -> str:
    if not math.isfinite(r.violation_rate):  # a failed run: unknown
        return "-"
    scen = r.scenario_violation_rate
    extra = f" ({100 * scen:.1f}%)" if scen is not None else ""
    return f"{100 * r.violation_rate:.1f}%{extra}"


def _settle(r: BenchRecord) -> str:
    def one(v: int | None) -> str:
        return "never" if v is None else str(v)

    changes = [s for sc in r.scenarios for s in sc.settle_windows[1:]]
    known = [v for v in changes if v is not None]
    worst = "never" if len(known) < len(changes) else str(max(known, default=0))
    return f"{one(r.settle_windows)} / {worst}" if changes else one(r.settle_windows)


def model_table(model: str, records: Sequence[BenchRecord]) -> Table:
    """The per-model table every benchmark prints."""
    rs = [r for r in records if r.model == model]
    slo = f"p{rs[0].percentile:g} <= {rs[0].slo_ms:.1f} ms" if rs else ""
    t = Table(title=f"{model}  (SLO {slo}, oracle {fmt_knobs(rs[0].oracle_knobs)})" if rs else "")
    for col in (
        "policy",
        "approach",
        "final knobs",
        "online cap rps",
        "/oracle",
        "/oracle run",
        "/aimd",
        "/paper",
        "violations (scen)",
        "viol. in cap",
        "chg after settle",
        "interf. viol (oracle)",
        "settle start/chg",
        "knob changes",
        "failed",
    ):
        t.add_column(
            col, justify="left" if col in ("policy", "approach", "final knobs") else "right"
        )
    notes = [f"{r.policy} FAILED: {r.error}" for r in rs if r.error]
    notes += [_repeated(r) for r in rs if r.attempts > 1 and not r.error]
    if any(r.low_staircase for r in rs):
        notes.append("* capacity from the low staircase (starting at 5 % of the oracle's capacity)")
    if notes:
        t.caption = "\n".join(notes)
    for r in rs:
        t.add_row(
            r.policy,
            r.approach,
            fmt_knobs(r.final_knobs),
            f"{r.online_capacity_rps:.1f}{'*' if r.low_staircase else ''}",
            _ratio(r.ratio_to_oracle),
            _ratio(r.ratio_to_oracle_run),
            _ratio(r.ratio_to_aimd),
            _ratio(r.ratio_to_paper),
            _viol(r),
            _pct(r.violation_rate_within),
            _int(r.changes_after_settle_max),
            _interf(r),
            _settle(r),
            str(r.knob_changes),
            str(r.failed_requests),
        )
    return t


def summary_rows(records: Sequence[BenchRecord]) -> list[dict[str, Any]]:
    """Per policy: mean and min ratio to oracle, mean ratio to aimd/paper, mean violations."""
    out = []
    for pol in dict.fromkeys(r.policy for r in records):
        rs = [r for r in records if r.policy == pol]
        ro = [r.ratio_to_oracle for r in rs if r.ratio_to_oracle is not None]
        rr = [r.ratio_to_oracle_run for r in rs if r.ratio_to_oracle_run is not None]
        sv = [r.scenario_violation_rate for r in rs if r.scenario_violation_rate is not None]
        vr = [r.violation_rate for r in rs if math.isfinite(r.violation_rate)]
        ra = [r.ratio_to_aimd for r in rs if r.ratio_to_aimd is not None]
        rp = [r.ratio_to_paper for r in rs if r.ratio_to_paper is not None]
        vw = [r.violation_rate_within for r in rs if r.violation_rate_within is not None]
        cs = [r.changes_after_settle_max for r in rs if r.changes_after_settle_max is not None]
        ra_f = [x for x in ra if math.isfinite(x)]
        row: dict[str, Any] = {
            "policy": pol,
            "models": len(rs),
            "mean_ratio_to_oracle": sum(ro) / len(ro) if ro else None,
            "min_ratio_to_oracle": min(ro) if ro else None,
            "models_at_0.95_oracle": sum(1 for x in ro if x >= 0.95),
            "mean_ratio_to_oracle_run": sum(rr) / len(rr) if rr else None,
            "mean_ratio_to_aimd": sum(ra_f) / len(ra_f) if ra_f else None,
            "mean_ratio_to_paper": sum(rp) / len(rp) if rp else None,
            "mean_violation_rate": sum(vr) / len(vr) if vr else None,
            "mean_scenario_violation_rate": sum(sv) / len(sv) if sv else None,
            "mean_violation_rate_within": sum(vw) / len(vw) if vw else None,
            "max_violation_rate_within": max(vw) if vw else None,
            "max_changes_after_settle": max(cs) if cs else None,
            "failed_requests": sum(r.failed_requests for r in rs),
        }
        if any(r.error for r in records):  # only where some run failed (real-server benches)
            row["failed_runs"] = sum(1 for r in rs if r.error)
        out.append(row)
    return out


def summary_table(records: Sequence[BenchRecord]) -> Table:
    t = Table(title="summary over models")
    rows = summary_rows(records)
    cols = list(rows[0]) if rows else []
    for c in cols:
        t.add_column(c, justify="left" if c == "policy" else "right")
    for row in rows:
        t.add_row(*[_cell(row[c]) for c in cols])
    return t


def markdown_tables(records: Sequence[BenchRecord]) -> str:
    """The per-model figures as one Markdown table, then the per-policy summary."""
    head = (
        "| model | SLO | policy | approach | final knobs | online cap rps | /oracle | /oracle run "
        "| /aimd | /paper | violations (scen) | viol. in cap | chg after settle "
        "| interf. viol (oracle) | settle start/chg | knob changes | failed |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in records:
        rows.append(
            f"| {r.model} | p{r.percentile:g} {r.slo_ms:.1f} ms | {r.policy} | {r.approach} "
            f"| {fmt_knobs(r.final_knobs)} | {r.online_capacity_rps:.1f}"
            f"{'*' if r.low_staircase else ''} "
            f"| {_ratio(r.ratio_to_oracle)} | {_ratio(r.ratio_to_oracle_run)} "
            f"| {_ratio(r.ratio_to_aimd)} | {_ratio(r.ratio_to_paper)} | {_viol(r)} "
            f"| {_pct(r.violation_rate_within)} | {_int(r.changes_after_settle_max)} "
            f"| {_interf(r)} | {_settle(r)} "
            f"| {r.knob_changes} | {r.failed_requests} |"
        )
    summ = summary_rows(records)
    cols = list(summ[0]) if summ else []
    s_head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    s_rows = ["| " + " | ".join(_cell(row[c]) for c in cols) + " |" for row in summ]
    note = "\n\n\\* capacity from the low staircase (starting at 5 % of the oracle's capacity).\n"
    failures = [f"- {r.model} {r.policy} FAILED: {r.error}" for r in records if r.error]
    failures += [f"- {r.model} {_repeated(r)}" for r in records if r.attempts > 1 and not r.error]
    if failures:
        note += "\n" + "\n".join(failures) + "\n"
    return head + "\n".join(rows) + note + "\n" + s_head + "\n".join(s_rows) + "\n"


def _repeated(r: BenchRecord) -> str:
    return f"{r.policy}: measured on attempt {r.attempts} (the earlier ones failed; see errors)"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(type(o).__name__)


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def write_report(
    records: Sequence[BenchRecord],
    out_dir: Path,
    *,
    bench: str,
    meta: Mapping[str, Any] | None = None,
    timeseries: Mapping[tuple[str, str], Sequence[WindowRecord]] | None = None,
    console: Console | None = None,
    plots: bool = True,
    show: bool = True,
) -> Path:
    """Print the tables (unless ``show`` is false); write ``results.json``, ``tables.md``,
    the time series' data in ``timeseries.json`` and, if ``plots``, ``capacity.png`` and
    ``timeseries_<model>_<policy>.png``. Files are replaced atomically, so a report
    rewritten while a benchmark runs is never seen half written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if show:
        con = console or Console(width=max(Console().width, 150))
        for model in dict.fromkeys(r.model for r in records):
            con.print(model_table(model, records))
        if records:
            con.print(summary_table(records))
    doc = {
        "bench": bench,
        **(meta or {}),
        "summary": summary_rows(records),
        "records": [r.to_json() for r in records],
    }
    path = out_dir / "results.json"
    _write_atomic(path, json.dumps(_clean(doc), indent=1, default=_json_default) + "\n")
    _write_atomic(out_dir / "tables.md", markdown_tables(records))
    if records and plots:
        plot_capacity(records, out_dir / "capacity.png")
    series: dict[str, list[dict[str, Any]]] = {}
    for (model, policy), ws in (timeseries or {}).items():
        safe = model.replace("/", "_")
        if plots:
            plot_timeseries(model, policy, ws, out_dir / f"timeseries_{safe}_{policy}.png")
        series[f"{model}|{policy}"] = [_window_json(w) for w in ws]
    if series:
        _write_atomic(out_dir / "timeseries.json", json.dumps(_clean(series)) + "\n")
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _window_json(w: WindowRecord) -> dict[str, Any]:
    return {
        "t_s": round(w.t_s, 3),
        "rate_rps": round(w.rate_rps, 3),
        "throughput_rps": round(w.throughput_rps, 3),
        "latency_ms": None if w.latency_ms is None else round(w.latency_ms, 3),
        "slo_ms": w.slo_ms,
        "max_batch_size": w.knobs.max_batch_size,
        "instances": w.knobs.instances,
        "queue_delay_us": w.knobs.queue_delay_us,
        "approach": w.approach,
        "reason": w.reason,
    }


def plot_capacity(records: Sequence[BenchRecord], path: Path) -> None:
    """Online capacity / oracle capacity, per model (groups) and policy (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in records))
    pols = list(dict.fromkeys(r.policy for r in records))
    fig, ax = plt.subplots(figsize=(min(16.0, max(8.0, 0.14 * len(models) * len(pols))), 6.0))
    width = 0.8 / max(1, len(pols))
    for j, pol in enumerate(pols):
        ys = []
        for mdl in models:
            r = next((x for x in records if x.model == mdl and x.policy == pol), None)
            ys.append(r.ratio_to_oracle if r and r.ratio_to_oracle is not None else 0.0)
        ax.bar([i + j * width for i in range(len(models))], ys, width, label=pol)
    ax.axhline(0.95, color="k", lw=0.8, ls="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))])
    ax.set_xticklabels(models, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("online capacity / oracle")
    ax.legend(fontsize=7, ncol=len(pols))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timeseries(model: str, policy: str, ws: Sequence[WindowRecord], path: Path) -> None:
    """Offered load and throughput, latency vs SLO, and knobs over one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [w.t_s for w in ws]
    fig, axs = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axs[0].plot(t, [w.rate_rps for w in ws], label="offered", color="gray")
    axs[0].plot(t, [w.throughput_rps for w in ws], label="throughput")
    axs[0].set_ylabel("req/s")
    axs[0].legend(fontsize=7)
    axs[1].plot(t, [w.latency_ms if w.latency_ms is not None else float("nan") for w in ws])
    axs[1].plot(t, [w.slo_ms for w in ws], color="r", ls="--", label="SLO")
    axs[1].set_yscale("log")
    axs[1].set_ylabel("window pXX latency ms")
    axs[1].legend(fontsize=7)
    axs[2].step(t, [w.knobs.max_batch_size for w in ws], where="post", label="max batch")
    axs[2].step(t, [w.knobs.instances for w in ws], where="post", label="instances")
    axs[2].set_yscale("log", base=2)
    axs[2].set_ylabel("knobs")
    axs[2].set_xlabel("virtual time s")
    axs[2].legend(fontsize=7)
    fig.suptitle(f"{model} - {policy} (staircase)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _int(x: int | None) -> str:
    return "-" if x is None else str(x)


def _interf(r: BenchRecord) -> str:
    """Windows over the SLO after the interference slowdown, ours (the oracle's)."""
    if r.interference_violation_rate is None:
        return "-"
    return f"{_pct(r.interference_violation_rate)} ({_pct(r.oracle_interference_violation_rate)})"
