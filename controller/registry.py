"""Registry of agents, their GPUs and models, and fleet-wide model settings.

Everything the admin API shows lives here. Model-level settings (SLO, policy) are keyed by
model name and apply to every agent serving that model. What must survive a restart goes
through to the state store (``controller.store``) before memory changes: settings (an
admin call answers once they are durable), each loop's policy state, and the decisions.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.events import Event, EventBus
from dnnscaler.controller.model_loop import ModelLoop
from dnnscaler.controller.store import (
    AgentFlags,
    DecisionRecord,
    StateStore,
    StoredSettings,
    StoreError,
)
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import GpuTelemetry, Knobs, Slo

log = get_logger(__name__)


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
    # Silent for longer than stale_after_s: its models' loops are kept for its return.
    lost: bool = False
    # The highest report sequence number taken on this stream (report_checks).
    last_seq: int = 0


@dataclass
class ModelSettings:
    slo: Slo
    policy: str
    policy_params: dict[str, Any] = field(default_factory=dict)
    paused: bool = False


class Registry:
    def __init__(self, config: ControllerConfig, store: StateStore | None = None) -> None:
        self.config = config
        self.store = store if store is not None else StateStore(config.state_path)
        self.events = EventBus()
        self.trace_decisions = False  # new model loops keep a decision trace (``Controller``)
        # What was last written per (agent, model): the row is rewritten only when it changed.
        self._persisted: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.agents: dict[str, AgentRecord] = {}
        self.settings: dict[str, ModelSettings] = {
            model: ModelSettings(s.slo, s.policy, s.policy_params, s.paused)
            for model, s in self.store.load_settings().items()
        }
        self.agent_flags: dict[str, AgentFlags] = self.store.load_agent_flags()
        if self.settings or self.agent_flags:
            log.info(
                "settings_restored",
                models=sorted(self.settings),
                agents_held=sorted(self.agent_flags),
                path=self.store.path,
            )

    def put_settings(self, model: str, settings: ModelSettings) -> None:
        """Store ``model``'s settings durably, then put them in force; raises
        ``StoreError`` (and changes nothing) when the store cannot take them."""
        stored = StoredSettings(
            settings.slo, settings.policy, dict(settings.policy_params), settings.paused
        )
        try:
            self.store.save_settings(model, stored)
        except sqlite3.Error as e:
            raise StoreError(f"state database {self.store.path}: {e}") from e
        self.settings[model] = settings

    def put_agent_flags(self, agent_id: str, flags: AgentFlags) -> None:
        """As ``put_settings``, for an agent's pause and drain flags."""
        try:
            self.store.save_agent_flags(agent_id, flags)
        except sqlite3.Error as e:
            raise StoreError(f"state database {self.store.path}: {e}") from e
        if flags == AgentFlags():
            self.agent_flags.pop(agent_id, None)
        else:
            self.agent_flags[agent_id] = flags

    def forget_agent(self, agent_id: str) -> list[str] | None:
        """Drop an agent that holds no stream: its record, its models' loops, their stored
        state and its flags (the decision history stays). Returns the models dropped, or
        None if neither memory nor the store knows the agent. Raises ``StoreError``, with
        nothing changed, when the store refuses. A lost agent is kept until this is called:
        a fleet that replaces nodes would otherwise grow its registry without end."""
        rec = self.agents.get(agent_id)
        try:
            stored = self.store.forget_agent(agent_id)
        except sqlite3.Error as e:
            raise StoreError(f"state database {self.store.path}: {e}") from e
        if rec is None and not stored and agent_id not in self.agent_flags:
            return None
        models = sorted(set(stored) | set(rec.models if rec is not None else ()))
        self.agents.pop(agent_id, None)
        self.agent_flags.pop(agent_id, None)
        for model in models:
            self._persisted.pop((agent_id, model), None)
        return models

    def hold_for(self, agent_id: str, model: str) -> str:
        """Why this loop's knobs must not change now ("" if the policy is in control)."""
        flags = self.agent_flags.get(agent_id, AgentFlags())
        if flags.draining:
            return "agent draining"
        if flags.paused:
            return "agent paused"
        if self.settings_for(model).paused:
            return "model paused"
        return ""

    def persist_loop(self, loop: ModelLoop) -> None:
        """The loop's state after a decision; a store failure is logged, control goes on.
        A report on which nothing changed (held, waiting for an apply, the same state
        object) writes nothing: no JSON encoding and no transaction on the report path."""
        key = (loop.agent_id, loop.model)
        pending = loop.pending.knobs if loop.pending is not None else None
        seen = (loop.policy_name, loop.knobs, pending, loop.generation)
        last = self._persisted.get(key)
        # The state itself is kept (compared by identity: frozen, replaced on each decision).
        if last is not None and last[0] is loop.policy_state and last[1:] == seen:
            return
        try:
            self.store.save_loop(loop.snapshot())
            self._persisted[key] = (loop.policy_state, *seen)
        except (sqlite3.Error, TypeError, ValueError) as e:
            log.error("loop_state_not_saved", agent=loop.agent_id, model=loop.model, error=str(e))

    def record_decision(
        self, loop: ModelLoop, old: Knobs, new: Knobs, cause: str, reason: str = ""
    ) -> None:
        """A decision into the history, and out to watchers."""
        self.events.publish(
            Event(
                "decision",
                loop.agent_id,
                loop.model,
                f"{cause}: {reason or loop.last_reason}",
                old,
                new,
                loop.generation,
            )
        )
        try:
            self.store.add_decision(
                DecisionRecord(
                    t=time.time(),
                    model=loop.model,
                    agent_id=loop.agent_id,
                    old_knobs=old,
                    new_knobs=new,
                    approach=loop.approach.value,
                    reason=reason or loop.last_reason,
                    cause=cause,
                )
            )
        except sqlite3.Error as e:
            log.error("decision_not_saved", agent=loop.agent_id, model=loop.model, error=str(e))

    def resume_loop(self, loop: ModelLoop) -> None:
        """A loop seen for the first time since this controller started: carry on from what
        the store holds for it, if anything (``ModelLoop.resume``)."""
        try:
            stored = self.store.load_loop(loop.agent_id, loop.model)
        except (sqlite3.Error, ValueError) as e:
            log.error("loop_state_unreadable", agent=loop.agent_id, model=loop.model, error=str(e))
            return
        if stored is None:
            return
        outcome = loop.resume(stored)
        log.info("loop_resume", agent=loop.agent_id, model=loop.model, outcome=outcome)
        if outcome != "resumed":
            self.record_decision(loop, stored.knobs, loop.knobs, "controller restart", outcome)

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
