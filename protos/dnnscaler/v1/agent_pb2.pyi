from dnnscaler.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMessage(_message.Message):
    __slots__ = ("hello", "report", "apply_result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    APPLY_RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    report: Report
    apply_result: ApplyResult
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., report: _Optional[_Union[Report, _Mapping]] = ..., apply_result: _Optional[_Union[ApplyResult, _Mapping]] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("name", "knobs", "limits", "generation", "instance_memory_mb", "available", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KNOBS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    knobs: _common_pb2.Knobs
    limits: _common_pb2.KnobLimits
    generation: int
    instance_memory_mb: float
    available: bool
    message: str
    def __init__(self, name: _Optional[str] = ..., knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., limits: _Optional[_Union[_common_pb2.KnobLimits, _Mapping]] = ..., generation: _Optional[int] = ..., instance_memory_mb: _Optional[float] = ..., available: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "node", "gpu", "backend_kind", "models", "agent_version", "backend_available", "backend_message")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    BACKEND_KIND_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    node: str
    gpu: _common_pb2.GpuInfo
    backend_kind: str
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    agent_version: str
    backend_available: bool
    backend_message: str
    def __init__(self, agent_id: _Optional[str] = ..., node: _Optional[str] = ..., gpu: _Optional[_Union[_common_pb2.GpuInfo, _Mapping]] = ..., backend_kind: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ..., agent_version: _Optional[str] = ..., backend_available: _Optional[bool] = ..., backend_message: _Optional[str] = ...) -> None: ...

class ModelReport(_message.Message):
    __slots__ = ("state", "window")
    STATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    state: ModelState
    window: _common_pb2.WindowStats
    def __init__(self, state: _Optional[_Union[ModelState, _Mapping]] = ..., window: _Optional[_Union[_common_pb2.WindowStats, _Mapping]] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("seq", "gpu", "models", "backend_available", "backend_message", "sent_at_unix_s")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    seq: int
    gpu: _common_pb2.GpuTelemetry
    models: _containers.RepeatedCompositeFieldContainer[ModelReport]
    backend_available: bool
    backend_message: str
    sent_at_unix_s: float
    def __init__(self, seq: _Optional[int] = ..., gpu: _Optional[_Union[_common_pb2.GpuTelemetry, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelReport, _Mapping]]] = ..., backend_available: _Optional[bool] = ..., backend_message: _Optional[str] = ..., sent_at_unix_s: _Optional[float] = ...) -> None: ...

class ApplyResult(_message.Message):
    __slots__ = ("model", "generation", "ok", "knobs_in_force", "error", "in_progress")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    KNOBS_IN_FORCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    model: str
    generation: int
    ok: bool
    knobs_in_force: _common_pb2.Knobs
    error: str
    in_progress: bool
    def __init__(self, model: _Optional[str] = ..., generation: _Optional[int] = ..., ok: _Optional[bool] = ..., knobs_in_force: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., error: _Optional[str] = ..., in_progress: _Optional[bool] = ...) -> None: ...

class ControllerMessage(_message.Message):
    __slots__ = ("welcome", "knob_update")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    KNOB_UPDATE_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    knob_update: KnobUpdate
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., knob_update: _Optional[_Union[KnobUpdate, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("controller_id", "report_interval_s")
    CONTROLLER_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    controller_id: str
    report_interval_s: float
    def __init__(self, controller_id: _Optional[str] = ..., report_interval_s: _Optional[float] = ...) -> None: ...

class KnobUpdate(_message.Message):
    __slots__ = ("model", "generation", "knobs", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    KNOBS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    generation: int
    knobs: _common_pb2.Knobs
    reason: str
    def __init__(self, model: _Optional[str] = ..., generation: _Optional[int] = ..., knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
