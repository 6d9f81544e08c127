from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Knobs(_message.Message):
    __slots__ = ("max_batch_size", "instances", "queue_delay_us")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    instances: int
    queue_delay_us: int
    def __init__(self, max_batch_size: _Optional[int] = ..., instances: _Optional[int] = ..., queue_delay_us: _Optional[int] = ...) -> None: ...

class KnobLimits(_message.Message):
    __slots__ = ("max_batch_size", "max_instances", "max_queue_delay_us")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_US_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_instances: int
    max_queue_delay_us: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_instances: _Optional[int] = ..., max_queue_delay_us: _Optional[int] = ...) -> None: ...

class Slo(_message.Message):
    __slots__ = ("percentile", "latency_ms")
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    percentile: float
    latency_ms: float
    def __init__(self, percentile: _Optional[float] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "name", "memory_total_mb")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    memory_total_mb: float
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., memory_total_mb: _Optional[float] = ...) -> None: ...

class GpuTelemetry(_message.Message):
    __slots__ = ("utilization_pct", "memory_used_mb", "memory_total_mb", "power_w")
    UTILIZATION_PCT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_MB_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_MB_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    utilization_pct: float
    memory_used_mb: float
    memory_total_mb: float
    power_w: float
    def __init__(self, utilization_pct: _Optional[float] = ..., memory_used_mb: _Optional[float] = ..., memory_total_mb: _Optional[float] = ..., power_w: _Optional[float] = ...) -> None: ...

class BatchStat(_message.Message):
    __slots__ = ("batch_size", "count", "compute_ms_mean")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_MEAN_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    count: int
    compute_ms_mean: float
    def __init__(self, batch_size: _Optional[int] = ..., count: _Optional[int] = ..., compute_ms_mean: _Optional[float] = ...) -> None: ...

class WindowStats(_message.Message):
    __slots__ = ("window_s", "completed", "failed", "throughput_rps", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "queue_mean_ms", "compute_mean_ms", "pending_requests", "batch_stats", "device_busy_share")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_RPS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    PENDING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_STATS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_BUSY_SHARE_FIELD_NUMBER: _ClassVar[int]
    window_s: float
    completed: int
    failed: int
    throughput_rps: float
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    queue_mean_ms: float
    compute_mean_ms: float
    pending_requests: int
    batch_stats: _containers.RepeatedCompositeFieldContainer[BatchStat]
    device_busy_share: float
    def __init__(self, window_s: _Optional[float] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., throughput_rps: _Optional[float] = ..., latency_mean_ms: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., queue_mean_ms: _Optional[float] = ..., compute_mean_ms: _Optional[float] = ..., pending_requests: _Optional[int] = ..., batch_stats: _Optional[_Iterable[_Union[BatchStat, _Mapping]]] = ..., device_busy_share: _Optional[float] = ...) -> None: ...
