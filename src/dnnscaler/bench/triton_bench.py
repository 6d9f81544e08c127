"""`dnnscaler bench triton`: the benchmark protocol (``harness``) on a local real Triton
(CPU or GPU), through ``triton_adapter``.

Besides the command, it keeps the names the Triton bench had before the harness was split
out, so existing imports (tests, docs, scripts) keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dnnscaler.bench import harness
from dnnscaler.bench.config import DEFAULT_SLO_MS, BenchConfig
from dnnscaler.bench.config import POLICIES as TRITON_POLICIES
from dnnscaler.bench.converge import SETTLE_S, Converged, converge
from dnnscaler.bench.harness import BenchResult, oracle_rows, parse_grid, quick_config
from dnnscaler.bench.probes import (
    PROBE_IN_FLIGHT,
    apply_and_wait,
    probe_in_flight,
    unit_latency_ms,
)
from dnnscaler.bench.retries import (
    STALL_WINDOWS,
    ServerStalled,
    UpstreamDefectError,
    describe_error,
    run_error,
    server_stall,
    with_retries,
)
from dnnscaler.bench.staircase import OnlineRun, run_staircase
from dnnscaler.bench.sweep import (
    ConfigCapacity,
    Probe,
    grid,
    measure_capacity,
    oracle_sweep,
    side_by_side,
)
from dnnscaler.bench.triton_adapter import TRITON, TritonServer, start_server, untraced

__all__ = [
    "DEFAULT_SLO_MS",
    "PROBE_IN_FLIGHT",
    "SETTLE_S",
    "STALL_WINDOWS",
    "TRITON",
    "TRITON_POLICIES",
    "BenchServer",
    "ConfigCapacity",
    "Converged",
    "OnlineRun",
    "Probe",
    "ServerStalled",
    "TritonBenchConfig",
    "TritonBenchResult",
    "UpstreamDefectError",
    "add_triton_parser",
    "apply_and_wait",
    "cmd_triton",
    "config_from_args",
    "converge",
    "describe_error",
    "grid",
    "measure_capacity",
    "oracle_rows",
    "oracle_sweep",
    "parse_grid",
    "probe_in_flight",
    "quick_config",
    "run_error",
    "run_staircase",
    "run_triton_bench",
    "server_stall",
    "side_by_side",
    "start_server",
    "unit_latency_ms",
    "untraced",
    "with_retries",
]

TritonBenchConfig = BenchConfig
TritonBenchResult = BenchResult
BenchServer = TritonServer


async def run_triton_bench(
    cfg: BenchConfig,
    progress: Callable[[str], None] = lambda s: None,
    on_update: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """``harness.run_bench`` on local Tritons."""
    return await harness.run_bench(TRITON, cfg, progress, on_update)


def config_from_args(args: Any) -> BenchConfig | int:
    """The bench config the options ask for, or exit code 2 after printing what is wrong."""
    return harness.config_from_args(args, TRITON)


def cmd_triton(args: Any) -> int:
    """Run the bench; 0 when every sweep and run finished, 1 when some failed (the report
    then lists them), 2 on a bad option."""
    return harness.run_cli(TRITON, args)


def add_triton_parser(sub: Any) -> None:
    """Add ``bench triton`` to the ``bench`` group."""
    p = harness.add_bench_parser(sub, TRITON.kind, "policies vs the oracle on a local real Triton")
    p.set_defaults(func=cmd_triton)
