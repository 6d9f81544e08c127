"""AdminService: the operator API (list agents and models, get a model, set SLO / policy).

Rejected requests change nothing: every field is validated before anything is stored, and
a refusal is INVALID_ARGUMENT (or NOT_FOUND) naming the field, never UNKNOWN.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import NoReturn

import grpc

from dnnscaler.controller.admin_checks import check_name, shown
from dnnscaler.controller.events import Event
from dnnscaler.controller.model_loop import ModelLoop
from dnnscaler.controller.registry import AgentRecord, ModelSettings, Registry
from dnnscaler.controller.store import AgentFlags, StoreError
from dnnscaler.core.convert import (
    knobs_from_pb,
    knobs_to_pb,
    limits_to_pb,
    slo_from_pb,
    slo_to_pb,
    telemetry_to_pb,
    window_to_pb,
)
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import InvalidValue, Knobs
from dnnscaler.policies.registry import POLICY_NAMES
from dnnscaler.v1 import admin_pb2, admin_pb2_grpc, common_pb2

log = get_logger(__name__)

DEFAULT_HISTORY = 50
MAX_HISTORY = 10_000


async def _refuse(context: grpc.aio.ServicerContext, e: InvalidValue, prefix: str = "") -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{prefix}{e.field}: {e.message}")
    raise AssertionError("unreachable: abort raises")


async def _names(context: grpc.aio.ServicerContext, **fields: tuple[str, bool]) -> None:
    """Check each name field (value, required); refuse the first bad one."""
    for field_name, (value, required) in fields.items():
        try:
            check_name(field_name, value, required=required)
        except InvalidValue as e:
            await _refuse(context, e)


async def _not_served(context: grpc.aio.ServicerContext, model: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.NOT_FOUND, f"model {shown(model)} is not served by any agent"
    )
    raise AssertionError("unreachable: abort raises")


async def _durably(
    context: grpc.aio.ServicerContext, write: Callable[[], None], **what: str
) -> None:
    """Run a store-then-apply ``write``; if the store refuses it, answer UNAVAILABLE."""
    try:
        write()
    except StoreError as e:
        log.error("not_saved", error=str(e), **what)
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"not saved, nothing changed: {e}")


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        registry: Registry,
        on_forget: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.registry = registry
        self.on_forget = on_forget  # drops a forgotten agent's metric series

    async def _put(
        self, context: grpc.aio.ServicerContext, model: str, settings: ModelSettings
    ) -> None:
        """Store the settings durably and put them in force, or refuse and change nothing."""
        await _durably(context, lambda: self.registry.put_settings(model, settings), model=model)
        s = settings
        self.registry.events.publish(
            Event(
                "setting",
                model=model,
                message=f"SLO p{s.slo.percentile:g} <= {s.slo.latency_ms:g} ms, policy {s.policy}"
                + (" (paused)" if s.paused else ""),
            )
        )

    def _status(self, loop: ModelLoop) -> admin_pb2.ModelStatus:
        settings = self.registry.settings_for(loop.model)
        m = admin_pb2.ModelStatus(
            agent_id=loop.agent_id,
            model=loop.model,
            slo=slo_to_pb(settings.slo),
            policy=loop.policy_name,
            approach=loop.approach.value,
            knobs=knobs_to_pb(loop.knobs),
            limits=limits_to_pb(loop.limits),
            generation=loop.generation,
            available=loop.available,
            last_error=loop.last_error or loop.message,
            knob_changes=loop.knob_changes,
            last_reason=loop.last_reason,
            hold=self.registry.hold_for(loop.agent_id, loop.model),
        )
        if loop.last_window is not None:
            m.last_window.CopyFrom(window_to_pb(loop.last_window))
        if loop.pending is not None:
            m.pending_knobs.CopyFrom(knobs_to_pb(loop.pending.knobs))
        return m

    def _agent(self, a: AgentRecord, now: float) -> admin_pb2.AgentStatus:
        gpu = common_pb2.GpuInfo(index=a.gpu_index, uuid=a.gpu_uuid, name=a.gpu_name)
        if a.gpu_memory_total_mb is not None:
            gpu.memory_total_mb = a.gpu_memory_total_mb
        flags = self.registry.agent_flags.get(a.agent_id, AgentFlags())
        return admin_pb2.AgentStatus(
            agent_id=a.agent_id,
            node=a.node,
            gpu=gpu,
            backend_kind=a.backend_kind,
            connected=a.connected,
            backend_available=a.backend_available,
            backend_message=a.backend_message,
            last_report_age_s=max(0.0, now - a.last_seen_s),
            telemetry=telemetry_to_pb(a.telemetry),
            models=sorted(a.models),
            reports=a.reports,
            paused=flags.paused,
            draining=flags.draining,
            lost=a.lost,
        )

    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAgentsResponse:
        now = time.monotonic()
        agents = sorted(self.registry.agents.values(), key=lambda a: a.agent_id)
        return admin_pb2.ListAgentsResponse(agents=[self._agent(a, now) for a in agents])

    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListModelsResponse:
        await _names(context, model=(request.model, False))
        loops = (
            self.registry.loops_for(request.model) if request.model else self.registry.all_loops()
        )
        if request.model and not loops:
            await _not_served(context, request.model)
        return admin_pb2.ListModelsResponse(models=[self._status(lp) for lp in loops])

    async def GetModel(
        self, request: admin_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ModelStatus:
        await _names(context, model=(request.model, True), agent_id=(request.agent_id, False))
        if request.agent_id:
            agent = self.registry.agents.get(request.agent_id)
            if agent is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"agent {shown(request.agent_id)} is not known"
                )
            assert agent is not None
            loop = agent.models.get(request.model)
            if loop is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"model {shown(request.model)} is not served by agent"
                    f" {shown(request.agent_id)}",
                )
            assert loop is not None
            return self._status(loop)
        loops = self.registry.loops_for(request.model)
        if not loops:
            await _not_served(context, request.model)
        return self._status(loops[0])

    async def SetSlo(
        self, request: admin_pb2.SetSloRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetSloResponse:
        await _names(context, model=(request.model, True))
        if not request.HasField("slo"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "slo: required")
        try:
            slo = slo_from_pb(request.slo)
        except InvalidValue as e:
            await _refuse(context, e, "slo.")
        if not self.registry.known_model(request.model):
            await _not_served(context, request.model)
        current = self.registry.settings_for(request.model)
        await self._put(context, request.model, replace(current, slo=slo))
        return admin_pb2.SetSloResponse(
            models=[self._status(lp) for lp in self.registry.loops_for(request.model)]
        )

    async def SetPolicy(
        self, request: admin_pb2.SetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetPolicyResponse:
        await _names(context, model=(request.model, True))
        if request.policy not in POLICY_NAMES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"policy: unknown {shown(request.policy)}; valid: {', '.join(POLICY_NAMES)}",
            )
        loops = self.registry.loops_for(request.model)
        if not loops:
            await _not_served(context, request.model)
        params: dict[str, object] = {}
        if request.policy == "static":
            if not request.HasField("knobs"):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "knobs: required for policy 'static'"
                )
            try:
                knobs: Knobs = knobs_from_pb(request.knobs)
            except InvalidValue as e:
                await _refuse(context, e, "knobs.")
            for lp in loops:
                try:
                    knobs.validate(lp.limits)
                except InvalidValue as e:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"knobs.{e.field}: {e.message} (limits of agent {shown(lp.agent_id)})",
                    )
            params["knobs"] = knobs
        elif request.HasField("knobs"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "knobs: only allowed with policy 'static'"
            )
        current = self.registry.settings_for(request.model)
        await self._put(context, request.model, ModelSettings(current.slo, request.policy, params))
        for lp in loops:
            lp.set_policy(request.policy, params)
        return admin_pb2.SetPolicyResponse(models=[self._status(lp) for lp in loops])

    async def ClearSlo(
        self, request: admin_pb2.ClearSloRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetSloResponse:
        await _names(context, model=(request.model, True))
        if not self.registry.known_model(request.model):
            await _not_served(context, request.model)
        current = self.registry.settings_for(request.model)
        await self._put(
            context, request.model, replace(current, slo=self.registry.config.default_slo)
        )
        return admin_pb2.SetSloResponse(
            models=[self._status(lp) for lp in self.registry.loops_for(request.model)]
        )

    async def Pause(
        self, request: admin_pb2.PauseRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PauseResponse:
        return await self._hold(request, context, paused=True)

    async def Resume(
        self, request: admin_pb2.PauseRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PauseResponse:
        return await self._hold(request, context, paused=False)

    async def Drain(
        self, request: admin_pb2.DrainRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.PauseResponse:
        await _names(context, agent_id=(request.agent_id, True))
        agent = await self._known_agent(context, request.agent_id)
        flags = self.registry.agent_flags.get(agent.agent_id, AgentFlags())
        await self._put_flags(context, agent.agent_id, replace(flags, draining=True))
        return self._held_agent(agent)

    async def _hold(
        self, request: admin_pb2.PauseRequest, context: grpc.aio.ServicerContext, paused: bool
    ) -> admin_pb2.PauseResponse:
        """Pause or resume a model (every agent's) or an agent (every model of it)."""
        await _names(context, model=(request.model, False), agent_id=(request.agent_id, False))
        if bool(request.model) == bool(request.agent_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "model, agent_id: give exactly one of them"
            )
        if request.model:
            if not self.registry.known_model(request.model):
                await _not_served(context, request.model)
            current = self.registry.settings_for(request.model)
            await self._put(context, request.model, replace(current, paused=paused))
            return admin_pb2.PauseResponse(
                models=[self._status(lp) for lp in self.registry.loops_for(request.model)]
            )
        agent = await self._known_agent(context, request.agent_id)
        flags = self.registry.agent_flags.get(agent.agent_id, AgentFlags())
        # Resuming an agent ends a drain too; pausing keeps one.
        new = replace(flags, paused=True) if paused else AgentFlags()
        await self._put_flags(context, agent.agent_id, new)
        return self._held_agent(agent)

    async def _known_agent(self, context: grpc.aio.ServicerContext, agent_id: str) -> AgentRecord:
        agent = self.registry.agents.get(agent_id)
        if agent is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"agent {shown(agent_id)} is not known")
        assert agent is not None
        return agent

    async def _put_flags(
        self, context: grpc.aio.ServicerContext, agent_id: str, flags: AgentFlags
    ) -> None:
        await _durably(
            context, lambda: self.registry.put_agent_flags(agent_id, flags), agent=agent_id
        )
        state = "draining" if flags.draining else "paused" if flags.paused else "policy in control"
        self.registry.events.publish(Event("setting", agent_id, message=f"agent {state}"))

    def _held_agent(self, agent: AgentRecord) -> admin_pb2.PauseResponse:
        return admin_pb2.PauseResponse(
            agents=[self._agent(agent, time.monotonic())],
            models=[self._status(agent.models[m]) for m in sorted(agent.models)],
        )

    async def Reprofile(
        self, request: admin_pb2.ReprofileRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetPolicyResponse:
        await _names(context, model=(request.model, True))
        loops = self.registry.loops_for(request.model)
        if not loops:
            await _not_served(context, request.model)
        for lp in loops:
            lp.set_policy(lp.policy_name, lp.policy_params)  # forgets the learned state
            self.registry.persist_loop(lp)
            self.registry.record_decision(
                lp, lp.knobs, lp.knobs, "reprofile", "operator: forget the learned surface"
            )
        return admin_pb2.SetPolicyResponse(models=[self._status(lp) for lp in loops])

    async def ForgetAgent(
        self, request: admin_pb2.ForgetAgentRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ForgetAgentResponse:
        await _names(context, agent_id=(request.agent_id, True))
        agent = self.registry.agents.get(request.agent_id)
        if agent is not None and agent.connected:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"agent {shown(request.agent_id)} is connected: stop it first (an agent that"
                " reconnects is known again)",
            )
        models: list[str] | None = None

        def forget() -> None:
            nonlocal models
            models = self.registry.forget_agent(request.agent_id)

        await _durably(context, forget, agent=request.agent_id)
        if models is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"agent {shown(request.agent_id)} is not known"
            )
        assert models is not None
        if self.on_forget is not None:
            self.on_forget(request.agent_id, models)
        log.info("agent_forgotten", agent=request.agent_id, models=models)
        self.registry.events.publish(
            Event(
                "agent_forgotten",
                request.agent_id,
                message=f"forgotten by an operator with {len(models)} model loop(s)",
            )
        )
        return admin_pb2.ForgetAgentResponse(agent_id=request.agent_id, models=models)

    async def History(
        self, request: admin_pb2.HistoryRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.HistoryResponse:
        await _names(context, model=(request.model, True))
        limit = request.limit or DEFAULT_HISTORY
        if limit > MAX_HISTORY:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"limit: at most {MAX_HISTORY}, got {limit}"
            )
        since = request.since if request.HasField("since") else None
        if since is not None and not math.isfinite(since):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"since: got {since}")
        try:
            rows = self.registry.store.history(request.model, since, limit)
        except sqlite3.Error as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"state database: {e}")
        if not rows and not self.registry.known_model(request.model):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {shown(request.model)} is not served and has no history",
            )
        return admin_pb2.HistoryResponse(
            decisions=[
                admin_pb2.DecisionEntry(
                    time=d.t,
                    model=d.model,
                    agent_id=d.agent_id,
                    old_knobs=knobs_to_pb(d.old_knobs),
                    new_knobs=knobs_to_pb(d.new_knobs),
                    approach=d.approach,
                    reason=d.reason,
                    cause=d.cause,
                )
                for d in rows
            ]
        )

    async def Watch(
        self, request: admin_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[admin_pb2.Event]:
        await _names(context, model=(request.model, False), agent_id=(request.agent_id, False))
        with self.registry.events.subscribe() as sub:
            while True:
                e = await sub.next()
                if e.kind != "lost" and (
                    (request.model and e.model != request.model)
                    or (request.agent_id and e.agent_id != request.agent_id)
                ):
                    continue
                out = admin_pb2.Event(
                    time=e.t,
                    kind=e.kind,
                    agent_id=e.agent_id,
                    model=e.model,
                    message=e.message,
                    generation=e.generation,
                )
                if e.old_knobs is not None:
                    out.old_knobs.CopyFrom(knobs_to_pb(e.old_knobs))
                if e.new_knobs is not None:
                    out.new_knobs.CopyFrom(knobs_to_pb(e.new_knobs))
                yield out
