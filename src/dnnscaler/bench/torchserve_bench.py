"""`dnnscaler bench torchserve`: the benchmark protocol (``harness``) on a local real
TorchServe, through ``torchserve_adapter``: the same options, tables, JSON and PNG as
``bench triton``, so that the two servers' figures compare row by row."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dnnscaler.bench import harness
from dnnscaler.bench.config import BenchConfig
from dnnscaler.bench.harness import BenchResult
from dnnscaler.bench.torchserve_adapter import TORCHSERVE


async def run_torchserve_bench(
    cfg: BenchConfig,
    progress: Callable[[str], None] = lambda s: None,
    on_update: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """``harness.run_bench`` on local TorchServes."""
    return await harness.run_bench(TORCHSERVE, cfg, progress, on_update)


def cmd_torchserve(args: Any) -> int:
    """Run the bench; 0 when every sweep and run finished, 1 when some failed (the report
    then lists them), 2 on a bad option."""
    return harness.run_cli(TORCHSERVE, args)


def add_torchserve_parser(sub: Any) -> None:
    """Add ``bench torchserve`` to the ``bench`` group."""
    p = harness.add_bench_parser(
        sub, TORCHSERVE.kind, "policies vs the oracle on a local real TorchServe"
    )
    p.set_defaults(func=cmd_torchserve)
