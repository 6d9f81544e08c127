"""Agent settings, validated at start-up (errors name the field)."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field

from dnnscaler.core.types import InvalidValue


@dataclass(frozen=True)
class AgentConfig:
    controller: str = "127.0.0.1:50051"
    agent_id: str = ""
    node: str = field(default_factory=socket.gethostname)
    gpu_index: int = 0
    # Used until the controller's welcome says otherwise.
    report_interval_s: float = 1.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    # An update the backend cannot take yet (busy with an earlier change) is retried this long.
    busy_retry_s: float = 90.0
    busy_retry_interval_s: float = 0.5
    # A backend call for a report (observe, reconnect) or a hello that takes longer than this
    # is reported as the backend not answering, and the agent goes on reporting meanwhile: a
    # hung server must not make the agent look dead to the controller (stale_after_s).
    backend_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if ":" not in self.controller:
            raise InvalidValue("controller", f"expected HOST:PORT, got {self.controller!r}")
        if self.gpu_index < 0:
            raise InvalidValue("gpu_index", "must be >= 0")
        for name in (
            "report_interval_s",
            "backoff_initial_s",
            "backoff_max_s",
            "busy_retry_s",
            "busy_retry_interval_s",
            "backend_timeout_s",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InvalidValue(name, f"must be > 0, got {v}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise InvalidValue("backoff_max_s", "must be >= backoff_initial_s")

    @property
    def resolved_id(self) -> str:
        return self.agent_id or f"{self.node}-gpu{self.gpu_index}"
