"""The interface every inference-server backend implements for the agent.

The agent reconciles: it observes what is actually in force, diffs it with the desired
knobs (carrying a generation number), applies only the difference, and reports what is now
true. Backends make ``apply`` idempotent and roll back to the last good config on failure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from dnnscaler.core.types import GpuTelemetry, KnobLimits, Knobs, WindowStats


class BackendUnavailable(Exception):
    """The server cannot be reached right now (transient: retry with backoff)."""


class KnobRejected(Exception):
    """The knobs can never be applied to this model (permanent: do not retry)."""


@dataclass(frozen=True)
class ModelInfo:
    """A model the backend serves, with the knobs actually in force."""

    name: str
    knobs: Knobs
    limits: KnobLimits
    instance_memory_mb: float | None = None
    available: bool = True
    message: str = ""


@dataclass(frozen=True)
class ModelWindow:
    """One model's actual state plus its statistics since the previous observation."""

    info: ModelInfo
    window: WindowStats


@dataclass(frozen=True)
class ApplyOutcome:
    """What an apply achieved. ``knobs_in_force`` is read back from the server."""

    ok: bool
    knobs_in_force: Knobs
    error: str = ""
    in_progress: bool = False


def within_memory_budget(
    limits: KnobLimits, instance_memory_mb: float | None, budget_mb: float | None, used_mb: float
) -> KnobLimits:
    """``limits`` with instances capped to what fits in ``budget_mb`` beside ``used_mb``
    taken by the other models (hosts without NVML declare a budget instead); unchanged
    without a budget or a footprint, and never below one instance."""
    if budget_mb is None or instance_memory_mb is None:
        return limits
    fit = math.floor((budget_mb - used_mb) / instance_memory_mb + 1e-9)
    return KnobLimits(
        max_batch_size=limits.max_batch_size,
        max_instances=max(1, min(limits.max_instances, fit)),
        max_queue_delay_us=limits.max_queue_delay_us,
    )


class Backend(Protocol):
    """An inference server for one GPU, as seen by the agent."""

    kind: str

    async def start(self) -> None:
        """Connect; raise ``BackendUnavailable`` if the server is not there yet."""
        ...

    async def close(self) -> None: ...

    async def list_models(self) -> list[ModelInfo]:
        """The models served now, with their actual knobs and limits."""
        ...

    async def observe(self) -> list[ModelWindow]:
        """Per-model statistics since the previous call (first call: since start)."""
        ...

    async def apply(self, model: str, knobs: Knobs) -> ApplyOutcome:
        """Make ``knobs`` true for ``model``; on failure keep/restore the last good config.

        Raises ``KnobRejected`` (before touching the server) for knobs outside limits.
        """
        ...

    async def gpu_telemetry(self) -> GpuTelemetry | None:
        """Telemetry this backend knows better than NVML (the sim); ``None`` defers to NVML."""
        ...
