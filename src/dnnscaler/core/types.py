"""Typed values shared by the controller, the agents, the policies, the sim and the benchmarks.

Everything here is a frozen dataclass with units in field names: these values cross the
wire (via ``dnnscaler.core.convert``), get persisted, and feed pure policy functions, so they
must be immutable and self-describing. ``None`` means "not known", never zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

SHOWN_CHARS = 64  # how much of a refused value an error message quotes


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for an error message, cut to ``limit`` characters (an error that
    echoes a 100 kB input back is itself a fault, #15)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class InvalidValue(ValueError):
    """A value failed validation; ``field`` names the offending field for error messages."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class Approach(StrEnum):
    """Which knob a policy is currently pushing."""

    UNDECIDED = "undecided"
    BATCHING = "batching"
    MULTI_TENANCY = "multi-tenancy"
    HYBRID = "hybrid"
    STATIC = "static"


@dataclass(frozen=True)
class Knobs:
    """The server configuration a policy controls for one model on one GPU."""

    max_batch_size: int = 1
    instances: int = 1
    queue_delay_us: int = 0

    def validate(self, limits: KnobLimits) -> None:
        """Raise ``InvalidValue`` naming the field if these knobs are outside ``limits``."""
        if not 1 <= self.max_batch_size <= limits.max_batch_size:
            raise InvalidValue(
                "max_batch_size",
                f"{self.max_batch_size} is outside 1..{limits.max_batch_size}",
            )
        if not 1 <= self.instances <= limits.max_instances:
            raise InvalidValue(
                "instances", f"{self.instances} is outside 1..{limits.max_instances}"
            )
        if not 0 <= self.queue_delay_us <= limits.max_queue_delay_us:
            raise InvalidValue(
                "queue_delay_us",
                f"{self.queue_delay_us} is outside 0..{limits.max_queue_delay_us}",
            )

    def clamp(self, limits: KnobLimits) -> Knobs:
        """These knobs forced inside ``limits`` (used by policies as a last safety net)."""
        return Knobs(
            max_batch_size=min(max(1, self.max_batch_size), limits.max_batch_size),
            instances=min(max(1, self.instances), limits.max_instances),
            queue_delay_us=min(max(0, self.queue_delay_us), limits.max_queue_delay_us),
        )


@dataclass(frozen=True)
class KnobLimits:
    """What a model on a server can take. ``max_instances`` already accounts for GPU memory
    when the agent knows the per-instance footprint (see ``instances_that_fit``)."""

    max_batch_size: int = 128
    max_instances: int = 10
    max_queue_delay_us: int = 100_000

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidValue("max_batch_size", "must be >= 1")
        if self.max_instances < 1:
            raise InvalidValue("max_instances", "must be >= 1")
        if self.max_queue_delay_us < 0:
            raise InvalidValue("max_queue_delay_us", "must be >= 0")


# What an SLO bounds, in the words ``status`` prints and docs/operations.md explains. The
# agent sits beside the server and sees neither a client's network nor its process, so it
# reports (and the policy steers) the server's own latency; leave the client path's share
# of the user's budget out of the SLO (docs/operations.md, "What the SLO bounds").
SLO_LATENCY = (
    "SLO latency is server-side: from the server reading a request to sending its response"
    " (Triton: request trace GRPC_WAITREAD_END to GRPC_SEND_END, the same requests as its"
    " nv_inference_request_summary_us; TorchServe: its access log's time per request, frontend"
    " taking the request to sending the response, in whole ms); it excludes the client's"
    " network and process"
)


# What an SLO may say: from 10 us (under any real server's own overhead) to an hour, and
# from the median to the p99.999 (a tail of one request in 100,000, which a window can still
# hold). Outside these an objective is a typo, not a target (#15: 1e308 ms was accepted).
SLO_LATENCY_MS_RANGE = (0.01, 3_600_000.0)
SLO_PERCENTILE_RANGE = (50.0, 99.999)


@dataclass(frozen=True)
class Slo:
    """A latency objective: the ``percentile``-th percentile of the *server-side* request
    latency (``SLO_LATENCY``) must be at most ``latency_ms``."""

    latency_ms: float
    percentile: float = 99.0

    def __post_init__(self) -> None:
        lo, hi = SLO_LATENCY_MS_RANGE
        if not (math.isfinite(self.latency_ms) and lo <= self.latency_ms <= hi):
            raise InvalidValue(
                "latency_ms", f"must be in [{lo:g}, {hi:g}] ms, got {self.latency_ms:g}"
            )
        lo, hi = SLO_PERCENTILE_RANGE
        if not (math.isfinite(self.percentile) and lo <= self.percentile <= hi):
            raise InvalidValue(
                "percentile", f"must be in [{lo:g}, {hi:g}], got {self.percentile:g}"
            )


@dataclass(frozen=True)
class BatchStat:
    """Executions of one batch size within a window and their mean compute time."""

    count: int
    compute_ms_mean: float


@dataclass(frozen=True)
class WindowStats:
    """What one model did during one control window, as measured by the agent.

    Latencies are end to end in ms as close to what a client sees as the backend can tell
    (Triton: the traced server span plus a measured transport round trip; sim: queue +
    compute); ``None`` when the window had no completed request.
    """

    window_s: float
    completed: int = 0
    failed: int = 0
    throughput_rps: float = 0.0
    latency_mean_ms: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    queue_mean_ms: float | None = None
    compute_mean_ms: float | None = None
    pending_requests: int | None = None
    batch_stats: Mapping[int, BatchStat] = field(default_factory=dict)
    # Share (0..1) of the serving device's compute in use, only where that measures spare
    # capacity (host CPUs for CPU instances); ``None`` for GPUs, whose NVML utilization
    # counts time with any kernel running and so cannot say whether another instance fits.
    device_busy_share: float | None = None

    def latency_at(self, percentile: float) -> float | None:
        """The best available estimate of the given latency percentile.

        Uses the nearest reported quantile at or above ``percentile`` so that an estimate
        never understates the tail.
        """
        if percentile <= 50:
            return self.latency_p50_ms
        if percentile <= 95:
            return self.latency_p95_ms if self.latency_p95_ms is not None else self.latency_p99_ms
        return self.latency_p99_ms

    @property
    def mean_batch_size(self) -> float | None:
        execs = sum(s.count for s in self.batch_stats.values())
        if execs == 0:
            return None
        return sum(b * s.count for b, s in self.batch_stats.items()) / execs


@dataclass(frozen=True)
class GpuTelemetry:
    """GPU readings; each field is ``None`` when unknown (no driver, unsupported query)."""

    utilization_pct: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    power_w: float | None = None


@dataclass(frozen=True)
class Observation:
    """Everything a policy may look at for one (agent, model) at one decision instant.

    ``now_s`` is a monotonic clock (wall or virtual); policies measure delays from it and
    never count calls.
    """

    now_s: float
    model: str
    slo: Slo
    knobs: Knobs
    limits: KnobLimits
    window: WindowStats
    gpu: GpuTelemetry = field(default_factory=GpuTelemetry)
    instance_memory_mb: float | None = None

    @property
    def latency_ms(self) -> float | None:
        """The window's latency at the SLO percentile."""
        return self.window.latency_at(self.slo.percentile)


def instances_that_fit(
    limits: KnobLimits,
    current_instances: int,
    instance_memory_mb: float | None,
    gpu: GpuTelemetry,
) -> int:
    """The largest instance count that fits in GPU memory given what is in use now.

    Unknown footprint or unknown memory means "trust ``limits.max_instances``".
    """
    if instance_memory_mb is None or instance_memory_mb <= 0:
        return limits.max_instances
    if gpu.memory_total_mb is None or gpu.memory_used_mb is None:
        return limits.max_instances
    free_mb = gpu.memory_total_mb - gpu.memory_used_mb
    extra = math.floor(free_mb / instance_memory_mb + 1e-9)
    return max(1, min(limits.max_instances, current_instances + max(0, extra)))
