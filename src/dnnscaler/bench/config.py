"""The parameters of a benchmark on a real local server (whichever kind), in one place
that the sweep, the staircase and the harness share."""

from __future__ import annotations

from dataclasses import dataclass, field

from dnnscaler.bench import metrics as m
from dnnscaler.core.types import Slo

POLICIES = ("dnnscaler", "paper", "aimd", "static-default", "oracle")
# The demo models' SLOs; every server kind serves the same demo model code.
DEFAULT_SLO_MS = {"wide_mlp": 60.0, "serial_io": 60.0, "resnet_small": 80.0}


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...] = ("wide_mlp", "serial_io", "resnet_small")
    policies: tuple[str, ...] = POLICIES
    slo_ms: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SLO_MS))
    percentile: float = 99.0
    window_s: float = 1.0
    batch_grid: tuple[int, ...] = (1, 4, 16)
    instance_grid: tuple[int, ...] = (1, 2, 4)
    probe_s: float = 4.0
    warm_s: float = 1.0
    bisect_iters: int = 4
    staircase: m.Staircase = field(
        default_factory=lambda: m.Staircase(
            start_frac=0.3, step_frac=0.1, max_frac=1.3, step_windows=8, min_half_requests=0
        )
    )
    seed: int = 0
    # A staircase run whose server crashed or stalled (Triton 2.51's tracing bug, see
    # docs/triton.md) is repeated this many times on a fresh server; every attempt's failure
    # is kept in the report's ``errors``.
    retries: int = 1

    def slo_for(self, model: str) -> Slo:
        return Slo(latency_ms=self.slo_ms.get(model, 60.0), percentile=self.percentile)
