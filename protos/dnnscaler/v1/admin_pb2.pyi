from dnnscaler.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_id", "node", "gpu", "backend_kind", "connected", "backend_available", "backend_message", "last_report_age_s", "telemetry", "models", "reports", "paused", "draining", "lost")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    BACKEND_KIND_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_REPORT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    node: str
    gpu: _common_pb2.GpuInfo
    backend_kind: str
    connected: bool
    backend_available: bool
    backend_message: str
    last_report_age_s: float
    telemetry: _common_pb2.GpuTelemetry
    models: _containers.RepeatedScalarFieldContainer[str]
    reports: int
    paused: bool
    draining: bool
    lost: bool
    def __init__(self, agent_id: _Optional[str] = ..., node: _Optional[str] = ..., gpu: _Optional[_Union[_common_pb2.GpuInfo, _Mapping]] = ..., backend_kind: _Optional[str] = ..., connected: _Optional[bool] = ..., backend_available: _Optional[bool] = ..., backend_message: _Optional[str] = ..., last_report_age_s: _Optional[float] = ..., telemetry: _Optional[_Union[_common_pb2.GpuTelemetry, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ..., reports: _Optional[int] = ..., paused: _Optional[bool] = ..., draining: _Optional[bool] = ..., lost: _Optional[bool] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("agent_id", "model", "slo", "policy", "approach", "knobs", "limits", "generation", "last_window", "available", "last_error", "knob_changes", "pending_knobs", "last_reason", "hold")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    APPROACH_FIELD_NUMBER: _ClassVar[int]
    KNOBS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_WINDOW_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    KNOB_CHANGES_FIELD_NUMBER: _ClassVar[int]
    PENDING_KNOBS_FIELD_NUMBER: _ClassVar[int]
    LAST_REASON_FIELD_NUMBER: _ClassVar[int]
    HOLD_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    model: str
    slo: _common_pb2.Slo
    policy: str
    approach: str
    knobs: _common_pb2.Knobs
    limits: _common_pb2.KnobLimits
    generation: int
    last_window: _common_pb2.WindowStats
    available: bool
    last_error: str
    knob_changes: int
    pending_knobs: _common_pb2.Knobs
    last_reason: str
    hold: str
    def __init__(self, agent_id: _Optional[str] = ..., model: _Optional[str] = ..., slo: _Optional[_Union[_common_pb2.Slo, _Mapping]] = ..., policy: _Optional[str] = ..., approach: _Optional[str] = ..., knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., limits: _Optional[_Union[_common_pb2.KnobLimits, _Mapping]] = ..., generation: _Optional[int] = ..., last_window: _Optional[_Union[_common_pb2.WindowStats, _Mapping]] = ..., available: _Optional[bool] = ..., last_error: _Optional[str] = ..., knob_changes: _Optional[int] = ..., pending_knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., last_reason: _Optional[str] = ..., hold: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model", "agent_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    agent_id: str
    def __init__(self, model: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class SetSloRequest(_message.Message):
    __slots__ = ("model", "slo")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SLO_FIELD_NUMBER: _ClassVar[int]
    model: str
    slo: _common_pb2.Slo
    def __init__(self, model: _Optional[str] = ..., slo: _Optional[_Union[_common_pb2.Slo, _Mapping]] = ...) -> None: ...

class SetSloResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("model", "policy", "knobs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    KNOBS_FIELD_NUMBER: _ClassVar[int]
    model: str
    policy: str
    knobs: _common_pb2.Knobs
    def __init__(self, model: _Optional[str] = ..., policy: _Optional[str] = ..., knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ...) -> None: ...

class SetPolicyResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class ClearSloRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("model", "agent_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    agent_id: str
    def __init__(self, model: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class PauseResponse(_message.Message):
    __slots__ = ("models", "agents")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    agents: _containers.RepeatedCompositeFieldContainer[AgentStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ..., agents: _Optional[_Iterable[_Union[AgentStatus, _Mapping]]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ReprofileRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ForgetAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class ForgetAgentResponse(_message.Message):
    __slots__ = ("agent_id", "models")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("model", "since", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    since: float
    limit: int
    def __init__(self, model: _Optional[str] = ..., since: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class DecisionEntry(_message.Message):
    __slots__ = ("time", "model", "agent_id", "old_knobs", "new_knobs", "approach", "reason", "cause")
    TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_KNOBS_FIELD_NUMBER: _ClassVar[int]
    NEW_KNOBS_FIELD_NUMBER: _ClassVar[int]
    APPROACH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    time: float
    model: str
    agent_id: str
    old_knobs: _common_pb2.Knobs
    new_knobs: _common_pb2.Knobs
    approach: str
    reason: str
    cause: str
    def __init__(self, time: _Optional[float] = ..., model: _Optional[str] = ..., agent_id: _Optional[str] = ..., old_knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., new_knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., approach: _Optional[str] = ..., reason: _Optional[str] = ..., cause: _Optional[str] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[DecisionEntry]
    def __init__(self, decisions: _Optional[_Iterable[_Union[DecisionEntry, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("model", "agent_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    agent_id: str
    def __init__(self, model: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("time", "kind", "agent_id", "model", "message", "old_knobs", "new_knobs", "generation")
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OLD_KNOBS_FIELD_NUMBER: _ClassVar[int]
    NEW_KNOBS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    time: float
    kind: str
    agent_id: str
    model: str
    message: str
    old_knobs: _common_pb2.Knobs
    new_knobs: _common_pb2.Knobs
    generation: int
    def __init__(self, time: _Optional[float] = ..., kind: _Optional[str] = ..., agent_id: _Optional[str] = ..., model: _Optional[str] = ..., message: _Optional[str] = ..., old_knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., new_knobs: _Optional[_Union[_common_pb2.Knobs, _Mapping]] = ..., generation: _Optional[int] = ...) -> None: ...
