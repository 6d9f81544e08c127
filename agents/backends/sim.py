"""A ``Backend`` over simulated GPUs: one or more sim models on one simulated GPU, in real time.

Each call advances every model's ``SimServer`` to the wall clock (``time.monotonic`` since
``start``), so an agent sees a live server without a GPU. Load per model is an open-loop Poisson
rate, settable at run time (``set_rate``); interference likewise (``set_interference``).
Models do not slow each other (each has its own latency profile); GPU telemetry sums their
memory and utilization (capped at 100 %).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dnnscaler.agents.backend import (
    ApplyOutcome,
    BackendUnavailable,
    KnobRejected,
    ModelInfo,
    ModelWindow,
)
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import GpuTelemetry, InvalidValue, KnobLimits, Knobs
from dnnscaler.sim.profile import Profile
from dnnscaler.sim.server import ReconfigTiming, SimServer

log = get_logger(__name__)


@dataclass(frozen=True)
class SimModelSpec:
    """One model on the simulated GPU: its latency profile, initial knobs and offered load."""

    profile: Profile
    knobs: Knobs = field(default_factory=Knobs)
    rate_rps: float = 0.0


class SimBackend:
    """The agent's ``Backend`` for simulated models (``kind = "sim"``)."""

    kind = "sim"

    def __init__(
        self,
        models: Mapping[str, SimModelSpec],
        *,
        seed: int = 0,
        gpu_memory_mb: float | None = None,
        timing: ReconfigTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not models:
            raise ValueError("SimBackend: models: at least one model is required")
        self._specs = dict(models)
        self._seed = seed
        self._timing = timing
        self._clock = clock
        self._gpu_memory_mb = gpu_memory_mb
        self._t0: float | None = None
        self._servers: dict[str, SimServer] = {}
        for name, spec in self._specs.items():
            try:
                spec.knobs.validate(self._limits(spec.profile))
            except InvalidValue as exc:
                raise ValueError(f"SimBackend: model {name!r}: knobs.{exc}") from None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self._t0 is not None:
            return
        self._t0 = self._clock()
        for i, (name, spec) in enumerate(sorted(self._specs.items())):
            srv = SimServer(spec.profile, spec.knobs, seed=self._seed + i, timing=self._timing)
            srv.set_arrival_rate(spec.rate_rps)
            self._servers[name] = srv
        log.info("sim backend started", models=sorted(self._servers))

    async def close(self) -> None:
        self._servers.clear()
        self._t0 = None

    # ---------------------------------------------------------------- helpers
    def _limits(self, profile: Profile) -> KnobLimits:
        return profile.limits()

    def _now(self) -> float:
        if self._t0 is None:
            raise BackendUnavailable("sim backend not started")
        return self._clock() - self._t0

    def _advance(self) -> None:
        now = self._now()
        for srv in self._servers.values():
            if now > srv.now_s:
                srv.advance_to(now)

    def _server(self, model: str) -> SimServer:
        self._now()
        try:
            return self._servers[model]
        except KeyError:
            raise KnobRejected(
                f"unknown model {model!r}; served: {', '.join(sorted(self._servers))}"
            ) from None

    def _info(self, name: str, srv: SimServer) -> ModelInfo:
        return ModelInfo(
            name=name,
            knobs=srv.knobs,
            limits=self._limits(srv.profile),
            instance_memory_mb=srv.profile.instance_memory_mb,
        )

    def server(self, model: str) -> SimServer:
        """The simulated server behind ``model`` (for tests and demos)."""
        return self._server(model)

    # ---------------------------------------------------------------- run-time load
    def set_rate(self, model: str, rps: float) -> None:
        """Change ``model``'s open-loop Poisson arrival rate from now on."""
        self._advance()
        self._server(model).set_arrival_rate(rps)

    def set_interference(self, model: str, factor: float) -> None:
        """Slow ``model``'s GPU share by ``factor`` (co-located work); 1.0 = alone."""
        self._advance()
        self._server(model).set_interference(factor)

    # ---------------------------------------------------------------- Backend protocol
    async def list_models(self) -> list[ModelInfo]:
        self._advance()
        return [self._info(n, s) for n, s in sorted(self._servers.items())]

    async def observe(self) -> list[ModelWindow]:
        self._advance()
        return [
            ModelWindow(info=self._info(n, s), window=s.collect_window())
            for n, s in sorted(self._servers.items())
        ]

    async def apply(self, model: str, knobs: Knobs) -> ApplyOutcome:
        self._advance()
        srv = self._server(model)
        try:
            knobs.validate(self._limits(srv.profile))
        except InvalidValue as exc:
            raise KnobRejected(f"model {model!r}: {exc}") from None
        total = self._gpu_memory_mb
        mem = srv.profile.instance_memory_mb
        if total is not None and mem is not None:
            others = sum(
                (s.memory_used_mb() or 0.0) for n, s in self._servers.items() if n != model
            )
            if others + knobs.instances * mem > total:
                raise KnobRejected(
                    f"model {model!r}: instances: {knobs.instances} x {mem:.0f} MB does not fit "
                    f"beside {others:.0f} MB in {total:.0f} MB of GPU memory"
                )
        srv.set_knobs(knobs)
        log.info("sim knobs applied", model=model, target=knobs, in_force=srv.knobs)
        return ApplyOutcome(
            ok=True, knobs_in_force=srv.knobs, in_progress=srv.pending_knobs is not None
        )

    async def gpu_telemetry(self) -> GpuTelemetry | None:
        self._advance()
        tels = [s.gpu_telemetry() for s in self._servers.values()]
        mems = [t.memory_used_mb for t in tels if t.memory_used_mb is not None]
        total = self._gpu_memory_mb
        if total is None:
            totals = [t.memory_total_mb for t in tels if t.memory_total_mb is not None]
            total = max(totals) if totals else None
        return GpuTelemetry(
            utilization_pct=min(100.0, sum(t.utilization_pct or 0.0 for t in tels)),
            memory_used_mb=sum(mems) if mems else None,
            memory_total_mb=total,
            power_w=None,
        )
