"""In-memory registry of agents, their GPUs and models, and fleet-wide model settings.

Everything the admin API shows lives here. Model-level settings (SLO, policy) are keyed by
model name and apply to every agent serving that model. The registry is the seam where
SQLite persistence will slot in (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.model_loop import ModelLoop
from dnnscaler.core.types import GpuTelemetry, Slo


@dataclass
class AgentRecord:
    agent_id: str
    node: str
    gpu_index: int
    gpu_uuid: str
    gpu_name: str
    gpu_memory_total_mb: float | None
    backend_kind: str
    connected: bool = True
    backend_available: bool = True
    backend_message: str = ""
    last_seen_s: float = 0.0
    reports: int = 0
    telemetry: GpuTelemetry = field(default_factory=GpuTelemetry)
    models: dict[str, ModelLoop] = field(default_factory=dict)
    # Outgoing messages for this agent's stream.
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    # Bumped on every (re)connect so an old stream's cleanup cannot remove a new one.
    session: int = 0


@dataclass
class ModelSettings:
    slo: Slo
    policy: str
    policy_params: dict[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.agents: dict[str, AgentRecord] = {}
        self.settings: dict[str, ModelSettings] = {}

    def settings_for(self, model: str) -> ModelSettings:
        """The model's settings, or the defaults if none were set. A read stores nothing:
        only what an operator set is state (and, with persistence, what gets saved)."""
        s = self.settings.get(model)
        if s is None:
            return ModelSettings(slo=self.config.default_slo, policy=self.config.default_policy)
        return s

    def edit_settings(self, model: str) -> ModelSettings:
        """The model's stored settings, created from the defaults: the object to change."""
        s = self.settings.get(model)
        if s is None:
            s = self.settings[model] = self.settings_for(model)
        return s

    def loops_for(self, model: str) -> list[ModelLoop]:
        return [
            a.models[model]
            for a in sorted(self.agents.values(), key=lambda a: a.agent_id)
            if model in a.models
        ]

    def all_loops(self) -> list[ModelLoop]:
        out: list[ModelLoop] = []
        for a in sorted(self.agents.values(), key=lambda a: a.agent_id):
            out.extend(a.models[m] for m in sorted(a.models))
        return out

    def known_model(self, model: str) -> bool:
        return any(model in a.models for a in self.agents.values())
