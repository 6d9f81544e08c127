"""The AgentService stream: hello, reports and apply results in; welcome and knob updates out.

Each report is handled as it arrives: for every model in it, record what is actually true,
run that model's loop, and queue an update if the policy changed the knobs. A malformed
message is logged and skipped; it never ends the stream or the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from prometheus_client import Gauge

from dnnscaler.controller.admin_checks import SHOWN_CHARS, check_name
from dnnscaler.controller.auth import Guard, Refused, refuse_log
from dnnscaler.controller.events import Event
from dnnscaler.controller.metrics import ControllerMetrics
from dnnscaler.controller.model_loop import ModelLoop
from dnnscaler.controller.registry import AgentRecord, Registry
from dnnscaler.controller.report_checks import (
    ModelCheck,
    Problem,
    check_apply_result,
    check_hello,
    check_report,
    clamp_state,
    first_models,
    state_problems,
)
from dnnscaler.controller.report_queue import Queued, ReportQueue
from dnnscaler.core.convert import (
    knobs_from_pb,
    knobs_to_pb,
    limits_from_pb,
)
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import InvalidValue, Knobs, WindowStats
from dnnscaler.policies.decision_trace import TraceRecorder
from dnnscaler.v1 import agent_pb2, agent_pb2_grpc

log = get_logger(__name__)

_CLOSE = object()
# The decider runs the policies for this long at most, then idles DECIDE_PAUSE_S so that the
# streams read. An idle pause, not sleep(0): gRPC's poller thread needs the GIL to hand the
# loop each read, and a busy main thread lets it in only every switch interval (5 ms), which
# capped reads near 200/s with the decider busy (bench scale, 300 agents). 25 ms: a slice
# adds at most that to a waiting report, and the pause costs a few per cent of the decider.
DECIDE_SLICE_S = 0.025
DECIDE_PAUSE_S = 0.001


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        registry: Registry,
        controller_id: str | None = None,
        metrics: ControllerMetrics | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.registry = registry
        self.guard = guard or Guard()
        self.metrics = metrics or ControllerMetrics()
        self.controller_id = controller_id or f"controller-{uuid.uuid4().hex[:8]}"
        # Reports wait here for the decider, newest-wins per agent (controller.report_queue).
        self.queue: ReportQueue[AgentRecord, agent_pb2.Report] = ReportQueue()
        self._decider: asyncio.Task[None] | None = None
        # Each loop's gauge children, looked up once: ``labels()`` on every report was about
        # 13 % of the controller's busy time at 1,500 agents (bench scale, static policy).
        self._gauges: dict[tuple[str, str], tuple[Gauge, Gauge, Gauge, Gauge]] = {}
        self._latency_gauges: dict[tuple[str, str], Gauge] = {}

    # -- stream ------------------------------------------------------------------------
    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.AgentMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[agent_pb2.ControllerMessage]:
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "hello":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the first message on the stream must be a hello",
            )
        hello = first.hello
        try:
            check_name("hello.agent_id", hello.agent_id)
        except InvalidValue as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{e.field}: {e.message}")
        try:
            self.guard.agent(context, hello.agent_id)
        except Refused as e:
            refuse_log("Connect", context, e)
            await context.abort(e.code, e.message)
        record = self._register(hello)
        session = record.session
        bound = log.bind(agent=record.agent_id, gpu=record.gpu_index)
        bound.info(
            "agent_connected",
            node=record.node,
            backend=record.backend_kind,
            models=sorted(record.models),
        )
        self.registry.events.publish(
            Event(
                "agent_connected",
                record.agent_id,
                message=f"node {record.node}, backend {record.backend_kind},"
                f" models {', '.join(sorted(record.models)) or '-'}",
            )
        )
        reader = asyncio.create_task(self._read(request_iterator, record))
        yield agent_pb2.ControllerMessage(
            welcome=agent_pb2.Welcome(
                controller_id=self.controller_id,
                report_interval_s=self.registry.config.report_interval_s,
            )
        )
        getter: asyncio.Task[Any] | None = None
        try:
            while True:
                getter = asyncio.create_task(record.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    break
                msg = getter.result()
                if msg is _CLOSE:
                    break
                yield msg
        finally:
            if getter is not None:
                getter.cancel()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                err = reader.exception()
                self.metrics.bad_messages.inc()
                code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else ""
                bound.warning("agent_stream_error", error=repr(err)[:SHOWN_CHARS], code=code)
            reader.cancel()
            current = self.registry.agents.get(record.agent_id)
            if current is record and record.session == session:
                record.connected = False
            bound.info("agent_disconnected")
            self.registry.events.publish(
                Event("agent_disconnected", record.agent_id, message="its stream ended")
            )

    async def _read(self, it: AsyncIterator[agent_pb2.AgentMessage], record: AgentRecord) -> None:
        async for msg in it:
            record.last_seen_s = time.monotonic()
            try:
                kind = msg.WhichOneof("kind")
                if kind == "report":
                    self._enqueue(record, msg.report)
                elif kind == "apply_result":
                    self._on_apply_result(record, msg.apply_result)
                elif kind == "hello":
                    log.warning("duplicate_hello_ignored", agent=record.agent_id)
            except Exception:
                self.metrics.bad_messages.inc()
                log.exception("bad_agent_message", agent=record.agent_id)

    # -- decisions, off the stream handlers ---------------------------------------------
    def _enqueue(self, record: AgentRecord, report: agent_pb2.Report) -> None:
        if self.queue.put(record.agent_id, Queued(record, report, time.monotonic())):
            self.metrics.reports_superseded.inc()
        self.metrics.report_queue.set(len(self.queue))
        if self._decider is None or self._decider.done():
            # In a context of its own: created from a stream handler, the task would
            # otherwise carry that stream's request id into every decision it logs.
            self._decider = asyncio.get_running_loop().create_task(
                self._decide_forever(), context=contextvars.Context()
            )

    async def _decide_forever(self) -> None:
        """Take reports off the queue and decide, yielding to the streams every slice."""
        while True:
            await self.queue.wait()
            t_end = time.monotonic() + DECIDE_SLICE_S
            while time.monotonic() < t_end and (item := self.queue.pop()) is not None:
                rec = item.record
                if self.registry.agents.get(rec.agent_id) is not rec:
                    continue  # its stream was replaced: a newer hello carries on
                try:
                    self._on_report(rec, item.report)
                except Exception:
                    self.metrics.bad_messages.inc()
                    log.exception("bad_agent_message", agent=rec.agent_id)
            self.metrics.report_queue.set(len(self.queue))
            await asyncio.sleep(DECIDE_PAUSE_S if len(self.queue) else 0)

    async def close(self) -> None:
        """Stop deciding (the controller is stopping); reports still queued are dropped."""
        if self._decider is not None:
            self._decider.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._decider
            self._decider = None

    # -- handlers ----------------------------------------------------------------------
    def _register(self, hello: agent_pb2.Hello) -> AgentRecord:
        old = self.registry.agents.get(hello.agent_id)
        if old is not None and old.connected:
            old.outbox.put_nowait(_CLOSE)  # a newer stream for the same agent wins
        fields, clamped = check_hello(hello)
        rec = AgentRecord(
            agent_id=hello.agent_id,
            node=fields.node,
            gpu_index=hello.gpu.index,
            gpu_uuid=fields.gpu_uuid,
            gpu_name=fields.gpu_name,
            gpu_memory_total_mb=fields.gpu_memory_total_mb,
            backend_kind=fields.backend_kind,
            backend_available=hello.backend_available,
            backend_message=fields.backend_message,
            last_seen_s=time.monotonic(),
            session=(old.session + 1) if old else 1,
        )
        for ms in first_models(hello.models, clamped):
            ms = clamp_state(ms, clamped)
            problems = state_problems(ms)
            if problems:
                self._refused(rec.agent_id, ModelCheck(ms.name, ms, None, tuple(problems)))
                continue
            previous = old.models.get(ms.name) if old else None
            desired = previous.desired_knobs() if previous is not None else None
            try:
                loop = self._upsert_model(rec, ms, previous)
            except InvalidValue as e:
                log.warning(
                    "bad_model_state", agent=rec.agent_id, model=ms.name[:SHOWN_CHARS], error=str(e)
                )
                continue
            if desired is not None and ms.generation == 0 and loop.generation > 0:
                self._restore(rec, loop, desired)
        if clamped:
            self._clamped(rec.agent_id, "", tuple(clamped))
        self.registry.agents[rec.agent_id] = rec
        if old is not None and old.lost:
            log.info("agent_back", agent=rec.agent_id, models=sorted(rec.models))
        return rec

    def _restore(self, rec: AgentRecord, loop: ModelLoop, desired: Knobs) -> None:
        """A restarted agent (generation 0) whose loops this controller kept: put back the
        knobs they had (``ModelLoop.restore``) rather than let the policy start over."""
        reported = loop.knobs
        update = loop.restore(desired, time.monotonic())
        log.info(
            "loop_kept",
            agent=rec.agent_id,
            model=loop.model,
            reported=str(reported),
            restore=str(update.knobs) if update else None,
        )
        if update is None:
            return
        self.registry.record_decision(loop, reported, update.knobs, "agent restart")
        self.registry.persist_loop(loop)
        rec.outbox.put_nowait(
            agent_pb2.ControllerMessage(
                knob_update=agent_pb2.KnobUpdate(
                    model=loop.model,
                    generation=update.generation,
                    knobs=knobs_to_pb(update.knobs),
                    reason=loop.last_reason,
                )
            )
        )

    def _refused(self, agent_id: str, mc: ModelCheck, event: str = "model_report_rejected") -> None:
        """A model's state or window not taken (``report_checks``): logged with the
        reasons and counted by field; its loop, knobs and policy state stay as they were."""
        log.warning(
            event,
            agent=agent_id,
            model=mc.name[:SHOWN_CHARS],
            reasons=[str(p) for p in mc.rejected],
        )
        for field in sorted({p.field for p in mc.rejected}):
            self.metrics.report_problems.labels(field=field, outcome="rejected").inc()

    def _clamped(self, agent_id: str, model: str, problems: tuple[Problem, ...]) -> None:
        log.info(
            "report_values_clamped",
            agent=agent_id,
            model=model[:SHOWN_CHARS],
            reasons=[str(p) for p in problems],
        )
        for field in sorted({p.field for p in problems}):
            self.metrics.report_problems.labels(field=field, outcome="clamped").inc()

    def _upsert_model(
        self, rec: AgentRecord, ms: agent_pb2.ModelState, previous: ModelLoop | None
    ) -> ModelLoop:
        check_name("model", ms.name)  # the model's name becomes a key, a label and a log field
        knobs = knobs_from_pb(ms.knobs)
        limits = limits_from_pb(ms.limits)
        mem = ms.instance_memory_mb if ms.HasField("instance_memory_mb") else None
        loop = rec.models.get(ms.name) or previous
        first_seen = loop is None
        if loop is None:
            settings = self.registry.settings_for(ms.name)
            loop = ModelLoop(
                agent_id=rec.agent_id,
                model=ms.name,
                knobs=knobs,
                limits=limits,
                generation=int(ms.generation),
                policy_name=settings.policy,
                policy_params=dict(settings.policy_params),
            )
            if self.registry.trace_decisions:
                loop.trace = TraceRecorder(settings.policy, dict(settings.policy_params))
        rec.models[ms.name] = loop
        loop.on_state(knobs, limits, int(ms.generation), mem, ms.available, ms.message)
        if first_seen:  # first time since this controller started: carry on from the store
            self.registry.resume_loop(loop)
        return loop

    def _on_report(self, rec: AgentRecord, report: agent_pb2.Report) -> None:
        t0 = time.monotonic()
        checked = check_report(report, rec.models.keys(), rec.last_seq)
        if checked.rejected:
            log.warning(
                "report_rejected", agent=rec.agent_id, reasons=[str(p) for p in checked.rejected]
            )
            for p in checked.rejected:
                self.metrics.report_problems.labels(field=p.field, outcome="rejected").inc()
            return
        rec.last_seq = max(rec.last_seq, int(report.seq))
        if checked.clamped:
            self._clamped(rec.agent_id, "", checked.clamped)
        rec.reports += 1
        rec.backend_available = report.backend_available
        rec.backend_message = checked.backend_message
        rec.telemetry = checked.telemetry
        reported = set()
        for mc in checked.models:
            name = mc.name
            reported.add(name)
            if mc.window is None:
                self._refused(rec.agent_id, mc)
                continue
            if mc.clamped:
                self._clamped(rec.agent_id, name, mc.clamped)
            try:
                loop = self._upsert_model(rec, mc.state, None)
                window = mc.window
            except InvalidValue as e:
                log.warning(
                    "bad_model_report", agent=rec.agent_id, model=name[:SHOWN_CHARS], error=str(e)
                )
                continue
            settings = self.registry.settings_for(name)
            in_force = loop.knobs
            update = loop.decide(
                t0,
                window,
                settings.slo,
                rec.telemetry,
                self.registry.config,
                hold=self.registry.hold_for(rec.agent_id, name),
            )
            self.registry.persist_loop(loop)
            self._export(rec.agent_id, loop, window, settings.slo.percentile)
            lat = window.latency_at(settings.slo.percentile)
            if self.registry.events.watchers and lat is not None and lat > settings.slo.latency_ms:
                self.registry.events.publish(
                    Event(
                        "slo_violation",
                        rec.agent_id,
                        name,
                        f"p{settings.slo.percentile:g} {lat:.1f} ms > {settings.slo.latency_ms:g}"
                        f" ms at {window.throughput_rps:.0f} rps, b{loop.knobs.max_batch_size}"
                        f" n{loop.knobs.instances}",
                    )
                )
            if update is not None:
                self.registry.record_decision(loop, in_force, update.knobs, "policy")
                log.info(
                    "knob_update",
                    agent=rec.agent_id,
                    model=name,
                    generation=update.generation,
                    max_batch_size=update.knobs.max_batch_size,
                    instances=update.knobs.instances,
                    queue_delay_us=update.knobs.queue_delay_us,
                    approach=loop.approach.value,
                    reason=loop.last_reason,
                )
                self.metrics.knob_updates.labels(model=name).inc()
                rec.outbox.put_nowait(
                    agent_pb2.ControllerMessage(
                        knob_update=agent_pb2.KnobUpdate(
                            model=name,
                            generation=update.generation,
                            knobs=knobs_to_pb(update.knobs),
                            reason=loop.last_reason,
                        )
                    )
                )
        for name in list(rec.models):
            if name in reported:
                continue
            # Keep the record (and its settings); say why it is not being controlled.
            rec.models[name].available = False
            rec.models[name].message = (
                "not served by the backend any more"
                if report.backend_available
                else f"backend unavailable: {report.backend_message}"
            )
        self.metrics.reports.inc()
        self.metrics.decision_seconds.observe(time.monotonic() - t0)
        if report.sent_at_unix_s > 0:  # set by agents that stamp their send (bench scale)
            self.metrics.report_age_seconds.observe(max(0.0, time.time() - report.sent_at_unix_s))

    def forget_metrics(self, agent_id: str, models: list[str]) -> None:
        """A forgotten agent's series go, with the gauges cached for them (a cached child
        of a removed series would be set without being exported again)."""
        for model in models:
            self._gauges.pop((agent_id, model), None)
            self._latency_gauges.pop((agent_id, model), None)
        self.metrics.forget(agent_id, models)

    def _export(self, agent_id: str, loop: ModelLoop, window: WindowStats, pct: float) -> None:
        m = self.metrics
        key = (agent_id, loop.model)
        gauges = self._gauges.get(key)
        if gauges is None:
            gauges = self._gauges[key] = (
                *m.knob_gauges(agent_id, loop.model),
                m.throughput.labels(agent=agent_id, model=loop.model),
            )
        batch, instances, delay, throughput = gauges
        batch.set(loop.knobs.max_batch_size)
        instances.set(loop.knobs.instances)
        delay.set(loop.knobs.queue_delay_us)
        lat = window.latency_at(pct)
        if lat is not None:  # the latency series appears only once a latency is known
            latency = self._latency_gauges.get(key)
            if latency is None:
                latency = self._latency_gauges[key] = m.latency_ms.labels(
                    agent=agent_id, model=loop.model
                )
            latency.set(lat)
        throughput.set(window.throughput_rps)

    def _on_apply_result(self, rec: AgentRecord, res: agent_pb2.ApplyResult) -> None:
        error, rejected, clamped = check_apply_result(res)
        if rejected:
            mc = ModelCheck(res.model, agent_pb2.ModelState(), None, tuple(rejected))
            self._refused(rec.agent_id, mc, "apply_result_rejected")
            return
        if clamped:
            self._clamped(rec.agent_id, res.model, tuple(clamped))
        loop = rec.models.get(res.model)
        if loop is None:
            log.warning("apply_result_for_unknown_model", agent=rec.agent_id, model=res.model)
            return
        in_force = knobs_from_pb(res.knobs_in_force)
        loop.on_apply_result(int(res.generation), res.ok, in_force, error, res.in_progress)
        outcome = "failed: " + error if not res.ok else "landing" if res.in_progress else "done"
        self.registry.events.publish(
            Event(
                "apply",
                rec.agent_id,
                res.model,
                f"generation {res.generation} {outcome}",
                new_knobs=in_force,
                generation=int(res.generation),
            )
        )

    # -- housekeeping ------------------------------------------------------------------
    def reap_stale(self) -> list[str]:
        """Mark agents silent for longer than ``stale_after_s`` lost (their stream, if any,
        is closed); returns the ids newly lost. The record and its models' loops (knobs,
        policy state) stay, in memory and in the store: the same agent id reconnecting
        carries on from them (``_register``), with no profiling from scratch."""
        now = time.monotonic()
        dropped = []
        for aid, rec in list(self.registry.agents.items()):
            if not rec.lost and now - rec.last_seen_s > self.registry.config.stale_after_s:
                rec.outbox.put_nowait(_CLOSE)
                rec.connected = False
                rec.lost = True
                for loop in rec.models.values():
                    loop.available = False
                    loop.message = "agent lost: its state is kept for its return"
                dropped.append(aid)
                silent = round(now - rec.last_seen_s, 1)
                log.warning("agent_lost", agent=aid, silent_s=silent, models=sorted(rec.models))
                self.registry.events.publish(
                    Event("agent_lost", aid, message=f"silent for {silent} s: lost, state kept")
                )
        agents = list(self.registry.agents.values())
        connected = sum(a.connected for a in agents)
        lost = sum(a.lost for a in agents)
        self.metrics.agents.labels(state="connected").set(connected)
        self.metrics.agents.labels(state="disconnected").set(len(agents) - connected - lost)
        self.metrics.agents.labels(state="lost").set(lost)
        return dropped
