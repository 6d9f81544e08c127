"""On a real local Triton, the controller (default policy) converges on each demo model to
knobs whose capacity under the SLO is at least 0.9 x the best config of a reduced oracle
grid, measured side by side in the same run; and no request fails meanwhile."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from dnnscaler.bench import metrics as m
from dnnscaler.bench.triton_bench import (
    BenchServer,
    ServerStalled,
    TritonBenchConfig,
    apply_and_wait,
    converge,
    oracle_sweep,
    side_by_side,
    start_server,
)
from dnnscaler.core.types import Knobs, Slo

# Known gap (issue #4 stays open). Runs on record (one Triton per model): with the affine
# batch law (to 8f8233a, 2026-11-29) serial_io and resnet_small passed every full run;
# wide_mlp passed 3 times and missed 4 (its batch cost is not affine on this CPU). With the
# batch-size table: the full run of 3d2f4e5 at 11-30 00:27 passed all three (wide_mlp b4 n2,
# 0.93); the clean-clone run of 88ea6a8 at 01:43 passed wide_mlp and serial_io and missed
# resnet_small, which then passed alone at 02:00 (b8 n2, the oracle's pick); the clean-clone
# run of 1a7aa7b at 02:05 passed all three (8 of 9 model runs with the batch-size table).
# With the take-over and queueing rules (55af80d-ead6aed, 11-30): clean-clone run at 04:08
# passed serial_io and missed wide_mlp and resnet_small (the latter ended early, 135 s);
# alone at 04:26 wide_mlp passed (b8 n2, the oracle's pick) and resnet_small's Triton died
# mid-run (connection refused); alone at 04:31 resnet_small passed (b8 n2, the oracle's).
# At 05:51 (da88a03, with -s) wide_mlp went b16 n1 -> b4 n2 (tied with b8 n2 within 3 %,
# the smaller batch preferred), b4 n2 broke at 568 rps, its ceiling scaled b8 n2 down and
# the unmeasured b8 n3 ranked first: 767 against b8 n2's 953 rps (0.80); serial_io passed
# (1.24); resnet_small's server died of SIGSEGV after the move to b8 n2. At 06:43 (retreat
# and rescaling rules) serial_io (1.34) and resnet_small (1.00, b8 n2) passed; wide_mlp's
# sweep ran on a slow box (b8 n2 515, b8 n4 605 rps) and the ladder then failed the
# oracle's own config at 454 rps: both 0 (the ladder now starts again lower then). At
# 07:20 (after fixing a shadowed name, see the mark) all three passed: wide_mlp b8 n2 (the
# oracle's pick; 1.24), serial_io b4 n5 (1.24), resnet_small b8 n3 (1.92; its ladder
# restarted at 0.4 x because the oracle's b8 n2, swept at 1,506 rps, failed 1,130).
# At 09:35 (agent survives a hung server; a run with no completion for 5 windows stops as
# ServerStalled) and 10:00 (the backend traces ~250 requests/s, not all) all three passed
# both times: wide_mlp and resnet_small at b8 n2 (the oracle's picks), serial_io b4 n5
# (1.24); 7:56 per run, no crash or hang.
# Triton 2.51 can also crash or hang mid-run with request tracing on (docs/triton.md): a
# model whose server crashed or stopped answering is measured again, once, on a fresh
# server. The test
# stays non-strict xfail: it runs in CI and reports, without blocking; a miss says its
# figures in CI's short summary (-rxX). Remove the mark once it passes reliably.
pytestmark = [
    # Only the known gap counts as the xfail: a miss (pytest.xfail with its figures), failed
    # requests (AssertionError) or a timeout (pytest.fail). Any other exception is a bug and
    # fails the run: at f36e82e a shadowed name raised AttributeError in all three models
    # and the mark hid it as three xfails in CI.
    pytest.mark.xfail(
        strict=False,
        reason="default policy below 0.9 x oracle on real Triton",
        raises=(AssertionError, pytest.fail.Exception),
    ),
    pytest.mark.slow,
    pytest.mark.triton,
    # Bounds a known-gap run in CI (a timeout counts as the xfail); two attempts fit.
    pytest.mark.timeout(600),
    pytest.mark.asyncio(loop_scope="module"),
]

MODELS = ("wide_mlp", "serial_io", "resnet_small")
SLO_MS = {"wide_mlp": 50.0, "serial_io": 60.0, "resnet_small": 80.0}
ATTEMPTS = 2  # a server that crashed or hung (not a miss) is replaced once

CFG = replace(
    TritonBenchConfig(),
    batch_grid=(1, 8),
    instance_grid=(1, 2, 4),
    probe_s=2.5,
    warm_s=0.5,
    bisect_iters=3,  # picks the best config; the ladder measures it against ours
    staircase=m.Staircase(min_half_requests=0),
)


@dataclass
class Outcome:
    knobs: Knobs
    oracle: Knobs
    ours_rps: float
    oracle_rps: float
    errors: int
    ladder: list[dict[str, Any]]


async def _measure(srv: BenchServer, model: str) -> Outcome:
    """Oracle sweep, 30 windows of the controller at 0.6 x the oracle, then both configs
    side by side on one rising ladder, on one server."""
    slo = Slo(latency_ms=SLO_MS[model], percentile=99.0)
    start = next(i for i in await srv.setup.list_models() if i.name == model).knobs
    sweep = await oracle_sweep(srv.grpc_url, srv.setup, model, slo, CFG)
    best = max(sweep, key=lambda c: c.capacity_rps)
    assert best.capacity_rps > 0
    knobs, errors = await converge(
        srv.grpc_url,
        srv.metrics_url,
        srv.setup,
        model,
        "dnnscaler",
        start,
        slo,
        rate_rps=0.6 * best.capacity_rps,
        windows=30,
    )
    if errors:
        return Outcome(knobs, best.knobs, 0.0, best.capacity_rps, errors, [])
    if knobs == best.knobs:
        # The oracle's own config: one capacity, which two ladders would only read with
        # two noises (11-30 07:45 in CI: b8 n2 against b8 n2 read 886 and 1,024 rps).
        return Outcome(knobs, best.knobs, best.capacity_rps, best.capacity_rps, 0, [])
    # Side by side: the converged knobs and the oracle's on one rising ladder of rates.
    # From 0.75 x: knobs that cannot carry that much fail the 0.9 bar anyway, and the
    # ladder's low rungs (2 reloads and probes each) were a third of the test's time. If
    # the oracle's own config fails there, the box got slower since the sweep (11-30 06:44:
    # b8 n4 swept at 605 rps, then failed 454 rps): the ladder starts again lower.
    for frac in (0.75, 0.4):
        ours, theirs, ladder = await side_by_side(
            srv.grpc_url,
            srv.setup,
            model,
            knobs,
            best.knobs,
            slo,
            start_rps=frac * best.capacity_rps,
            max_rps=1.6 * best.capacity_rps,
        )
        if theirs > 0:
            break
    await apply_and_wait(srv.setup, model, start)
    return Outcome(knobs, best.knobs, ours, theirs, 0, ladder)


async def _server_failure(srv: BenchServer) -> str | None:
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


@pytest.mark.parametrize("model", MODELS)
async def test_converges_near_oracle(model: str) -> None:
    from dnnscaler.triton.demo_models import write_repository

    with tempfile.TemporaryDirectory(prefix="dnnscaler-conv-") as tmp:
        repo = Path(tmp) / "models"
        write_repository(repo, [model])
        for attempt in range(1, ATTEMPTS + 1):
            # A Triton of its own per model and attempt: a crash cannot spill over.
            async with start_server(repo, [model], Path(tmp) / f"t{attempt}") as srv:
                try:
                    out = await _measure(srv, model)
                except Exception as exc:
                    failure = await _server_failure(srv)
                    if failure is None and isinstance(exc, ServerStalled):
                        failure = str(exc)  # hung in its model instances, frontend alive
                    if failure is None:
                        raise
                else:
                    failure = await _server_failure(srv) if out.errors else None
            if failure is None:
                break
            print(f"{model}: attempt {attempt}: {failure}")
        else:
            pytest.xfail(f"{model}: the server crashed or hung in every attempt: {failure}")
    assert out.errors == 0
    ratio = out.ours_rps / out.oracle_rps if out.oracle_rps > 0 else 0.0
    summary = (
        f"{model}: converged {out.knobs} {out.ours_rps:.1f} rps vs oracle {out.oracle}"
        f" {out.oracle_rps:.1f} rps (ratio {ratio:.2f}, attempt {attempt})"
    )
    print(summary)
    if ratio < 0.9:
        # An imperative xfail carries the figures into CI's short summary (-rxX), which a
        # marked xfail's fixed reason does not; the ladder goes to the captured output.
        print(out.ladder)
        pytest.xfail(summary)
