"""AdminService: the operator API (list agents and models, get a model, set SLO / policy).

Rejected requests change nothing: every field is validated before anything is stored, and
a refusal is INVALID_ARGUMENT (or NOT_FOUND) naming the field, never UNKNOWN.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import NoReturn

import grpc

from dnnscaler.controller.admin_checks import check_name, shown
from dnnscaler.controller.model_loop import ModelLoop
from dnnscaler.controller.registry import ModelSettings, Registry
from dnnscaler.controller.store import StoreError
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


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def _put(
        self, context: grpc.aio.ServicerContext, model: str, settings: ModelSettings
    ) -> None:
        """Store the settings durably and put them in force, or refuse and change nothing."""
        try:
            self.registry.put_settings(model, settings)
        except StoreError as e:
            log.error("settings_not_saved", model=model, error=str(e))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not saved, nothing changed: {e}")

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
        )
        if loop.last_window is not None:
            m.last_window.CopyFrom(window_to_pb(loop.last_window))
        if loop.pending is not None:
            m.pending_knobs.CopyFrom(knobs_to_pb(loop.pending.knobs))
        return m

    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListAgentsResponse:
        now = time.monotonic()
        out = admin_pb2.ListAgentsResponse()
        for a in sorted(self.registry.agents.values(), key=lambda a: a.agent_id):
            gpu = common_pb2.GpuInfo(index=a.gpu_index, uuid=a.gpu_uuid, name=a.gpu_name)
            if a.gpu_memory_total_mb is not None:
                gpu.memory_total_mb = a.gpu_memory_total_mb
            out.agents.add(
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
            )
        return out

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
