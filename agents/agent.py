"""The per-GPU agent: holds one stream to the controller and reconciles its backend.

Reconcile = observe the server's actual state, diff it with the desired knobs (carrying a
generation number), apply only the difference, report what is now true. Fail-static: when
the controller is away, the server keeps its last applied config; nothing is reverted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import tenacity

from dnnscaler import __version__
from dnnscaler.agents.backend import (
    ApplyOutcome,
    Backend,
    BackendUnavailable,
    KnobRejected,
    ModelInfo,
    ModelWindow,
)
from dnnscaler.agents.config import AgentConfig
from dnnscaler.agents.metrics import AgentMetrics
from dnnscaler.agents.telemetry import GpuIdentity, NvmlTelemetry
from dnnscaler.core.convert import (
    knobs_from_pb,
    knobs_to_pb,
    limits_to_pb,
    telemetry_to_pb,
    window_to_pb,
)
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import GpuTelemetry, Knobs
from dnnscaler.security.credentials import secure_channel
from dnnscaler.v1 import agent_pb2, agent_pb2_grpc, common_pb2

log = get_logger(__name__)


class _NotEstablished(Exception):
    """The stream failed before the controller's welcome (retry with backoff)."""


@dataclass(frozen=True)
class _Observed:
    models: list[ModelWindow]
    telemetry: GpuTelemetry | None  # the backend's own, if it has any


@dataclass
class _Failed:
    """Knobs whose apply failed at the server: how often in a row, and when they may be
    tried again (monotonic seconds)."""

    count: int
    retry_at_s: float


HELD_BACK = "held back"  # how an update kept from the server by the apply backoff is answered
MAX_FAILED_KNOBS = 16  # failed knob sets remembered per model (oldest forgotten first)


@dataclass
class _ModelProgress:
    applied_generation: int = 0
    seen_generation: int = 0
    # An apply still running in the server (e.g. a reload): (generation, target knobs).
    in_progress: tuple[int, Knobs] | None = None
    # The knobs of the last update that landed (before the first: those in force when the
    # agent first saw the model): what the controller wants in force. A server that comes
    # back from an outage with other knobs (a restart reads its repository's config) is
    # set back to these.
    good_knobs: Knobs | None = None
    # The server or the model was unavailable since the knobs were last checked.
    recheck: bool = False
    # Knobs whose apply failed, with their backoff (``AgentConfig.apply_backoff_*``).
    failed: dict[Knobs, _Failed] = field(default_factory=dict)


class Agent:
    def __init__(
        self, config: AgentConfig, backend: Backend, telemetry: NvmlTelemetry | None = None
    ) -> None:
        self.config = config
        self.backend = backend
        self.telemetry = telemetry if telemetry is not None else NvmlTelemetry(config.gpu_index)
        self.agent_id = config.resolved_id
        self.metrics = AgentMetrics()
        self.log = log.bind(agent=self.agent_id, gpu=config.gpu_index)
        self.report_interval_s = config.report_interval_s
        self.progress: dict[str, _ModelProgress] = {}
        self.backend_available = False
        self.backend_message = "not started"
        self.connected = asyncio.Event()
        self.sessions = 0
        self._stop = asyncio.Event()
        self._outbox: asyncio.Queue[agent_pb2.AgentMessage | None] | None = None
        self._apply_locks: dict[str, asyncio.Lock] = {}
        self._seq = 0
        self._applies: set[asyncio.Task[None]] = set()
        # The backend observation in flight: it outlives a report that gave up waiting on it,
        # so a hung server gets one call at a time, not one more per report.
        self._observation: asyncio.Task[_Observed] | None = None
        self._observation_started_s = 0.0
        self._stalled = False
        # Reconnect attempts that failed before a welcome (each followed by a backoff).
        self.connect_failures = 0
        # Applies that reached the server, and updates held back by the apply backoff.
        self.apply_attempts = 0
        self.held_back = 0
        self.reconciles = 0

    # -- lifecycle ---------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Run until ``stop()``: (re)connect with exponential backoff, forever."""
        await self._ensure_backend()
        while not self._stop.is_set():
            retrying = tenacity.AsyncRetrying(
                wait=tenacity.wait_exponential_jitter(
                    multiplier=self.config.backoff_initial_s, max=self.config.backoff_max_s
                ),
                retry=tenacity.retry_if_exception_type(
                    (_NotEstablished, grpc.aio.AioRpcError, OSError)
                ),
                before_sleep=self._before_reconnect,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        if self._stop.is_set():
                            return
                        await self._session()
            except asyncio.CancelledError:
                raise
        if self._observation is not None:
            self._observation.cancel()
            with contextlib.suppress(BaseException):
                await self._observation
            self._observation = None
        self.log.info("agent_stopped")

    def _before_reconnect(self, rs: tenacity.RetryCallState) -> None:
        self.connect_failures += 1
        self.log.info(
            "controller_unreachable",
            controller=self.config.controller,
            attempt=rs.attempt_number,
            error=str(rs.outcome.exception()) if rs.outcome else "",
        )

    async def _ensure_backend(self) -> bool:
        try:
            await self.backend.start()
            if not self.backend_available:
                self.log.info("backend_available", backend=self.backend.kind)
            self.backend_available = True
            self.backend_message = ""
        except BackendUnavailable as e:
            if self.backend_available or self.backend_message == "not started":
                self.log.warning("backend_unavailable", backend=self.backend.kind, error=str(e))
            self.backend_available = False
            self.backend_message = str(e) or "backend unavailable"
        return self.backend_available

    # -- one stream --------------------------------------------------------------------
    async def _session(self) -> None:
        outbox: asyncio.Queue[agent_pb2.AgentMessage | None] = asyncio.Queue()
        outbox.put_nowait(agent_pb2.AgentMessage(hello=await self._hello()))

        async def outgoing() -> AsyncIterator[agent_pb2.AgentMessage]:
            while True:
                msg = await outbox.get()
                if msg is None:
                    return
                yield msg

        established = False
        cfg = self.config
        keepalive = (
            ("grpc.keepalive_time_ms", int(cfg.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
            # gRPC 1.6x waits this long (default 60 s) for any ping's ack, whatever the
            # keepalive timeout says: a stalled link went unnoticed for 40 s without it.
            ("grpc.http2.ping_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        )
        async with secure_channel(
            cfg.controller,
            cfg.tls_ca,
            cfg.tls_cert,
            cfg.tls_key,
            cfg.tls_server_name,
            options=keepalive,
        ) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            call = stub.Connect(outgoing())
            reporter: asyncio.Task[None] | None = None
            stopper = asyncio.create_task(self._stop.wait())
            welcome_by = time.monotonic() + cfg.connect_timeout_s
            try:
                it = call.__aiter__()
                while True:
                    nxt = asyncio.ensure_future(it.__anext__())
                    # Until the welcome, the attempt is bounded: a stalled link (the TCP
                    # connection opens, no byte comes back) is retried with backoff.
                    limit = None if established else max(0.0, welcome_by - time.monotonic())
                    done, _ = await asyncio.wait(
                        {nxt, stopper}, timeout=limit, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not done:
                        nxt.cancel()
                        call.cancel()
                        raise _NotEstablished(
                            f"no welcome within {cfg.connect_timeout_s:g} s of opening the stream"
                        )
                    if nxt not in done:
                        nxt.cancel()
                        call.cancel()
                        return
                    try:
                        msg = nxt.result()
                    except StopAsyncIteration:
                        break
                    kind = msg.WhichOneof("kind")
                    if kind == "welcome":
                        established = True
                        self.sessions += 1
                        self.metrics.sessions.inc()
                        self.metrics.connected.set(1)
                        if msg.welcome.report_interval_s > 0:
                            self.report_interval_s = msg.welcome.report_interval_s
                        self._outbox = outbox
                        self.connected.set()
                        self.log.info("connected", controller=msg.welcome.controller_id)
                        if reporter is None:
                            reporter = asyncio.create_task(self._report_loop(outbox))
                    elif kind == "knob_update" and established:
                        u = msg.knob_update
                        task = asyncio.create_task(
                            self._apply(u.model, int(u.generation), knobs_from_pb(u.knobs))
                        )
                        self._applies.add(task)
                        task.add_done_callback(self._applies.discard)
            except grpc.aio.AioRpcError as e:
                if not established:
                    raise _NotEstablished(f"{e.code().name}: {e.details()}") from e
                self.log.warning("stream_broken", code=e.code().name, details=e.details())
            finally:
                stopper.cancel()
                self.connected.clear()
                self.metrics.connected.set(0)
                self._outbox = None
                outbox.put_nowait(None)
                if reporter is not None:
                    reporter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reporter
        if not established:
            raise _NotEstablished("stream closed before welcome")
        self.log.info("disconnected")

    def _send(self, msg: agent_pb2.AgentMessage) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(msg)

    # -- messages ----------------------------------------------------------------------
    def _model_state(self, info: ModelInfo) -> agent_pb2.ModelState:
        prog = self.progress.setdefault(info.name, _ModelProgress())
        if prog.in_progress is not None and info.knobs == prog.in_progress[1]:
            # The background apply has landed: only now is its generation in force.
            prog.applied_generation = prog.in_progress[0]
            prog.good_knobs = prog.in_progress[1]
            prog.in_progress = None
            self.log.info("apply_completed", model=info.name, generation=prog.applied_generation)
            self.metrics.applies.labels(info.name, "ok").inc()
        if prog.good_knobs is None and info.available and prog.in_progress is None:
            prog.good_knobs = info.knobs  # fail-static: what serves now is kept
        if not info.available:
            prog.recheck = True
        ms = agent_pb2.ModelState(
            name=info.name,
            knobs=knobs_to_pb(info.knobs),
            limits=limits_to_pb(info.limits),
            generation=prog.applied_generation,
            available=info.available,
            message=info.message,
        )
        if info.instance_memory_mb is not None:
            ms.instance_memory_mb = info.instance_memory_mb
        return ms

    async def _hello(self) -> agent_pb2.Hello:
        ident: GpuIdentity = self.telemetry.identity()
        gpu = common_pb2.GpuInfo(index=ident.index, uuid=ident.uuid, name=ident.name)
        tel = await self._telemetry()
        total = ident.memory_total_mb if ident.memory_total_mb is not None else tel.memory_total_mb
        if total is not None:
            gpu.memory_total_mb = total
        models: list[ModelInfo] = []
        available, message = False, self._stall_message()
        if not self._observing():  # never stack a call on a backend that is not answering
            try:
                models = await asyncio.wait_for(
                    self._hello_models(), timeout=self.config.backend_timeout_s
                )
                available, message = self.backend_available, self.backend_message
            except TimeoutError:
                message = (
                    f"{self.backend.kind} backend did not answer within "
                    f"{self.config.backend_timeout_s:g} s"
                )
                self.log.warning("backend_not_answering", during="hello")
                self.backend_available, self.backend_message = False, message
        return agent_pb2.Hello(
            agent_id=self.agent_id,
            node=self.config.node,
            gpu=gpu,
            backend_kind=self.backend.kind,
            models=[self._model_state(m) for m in models],
            agent_version=__version__,
            backend_available=available,
            backend_message=message,
        )

    async def _hello_models(self) -> list[ModelInfo]:
        if self.backend_available or await self._ensure_backend():
            try:
                return await self.backend.list_models()
            except BackendUnavailable as e:
                self.backend_available, self.backend_message = False, str(e)
        return []

    def _observing(self) -> bool:
        return self._observation is not None and not self._observation.done()

    def _stall_message(self) -> str:
        waited = time.monotonic() - self._observation_started_s
        return f"{self.backend.kind} backend not answering (a call pending for {waited:.0f} s)"

    async def _telemetry(self) -> GpuTelemetry:
        own = None
        if self.backend_available and not self._observing():
            with contextlib.suppress(TimeoutError):
                own = await asyncio.wait_for(
                    self.backend.gpu_telemetry(), timeout=self.config.backend_timeout_s
                )
        return own if own is not None else self.telemetry.read()

    async def _report_loop(self, outbox: asyncio.Queue[agent_pb2.AgentMessage | None]) -> None:
        next_at = time.monotonic()
        while True:
            next_at += self.report_interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - self.report_interval_s)
            try:
                outbox.put_nowait(agent_pb2.AgentMessage(report=await self._report()))
            except Exception:
                self.log.exception("report_failed")

    async def _report(self) -> agent_pb2.Report:
        self._seq += 1
        rep = agent_pb2.Report(seq=self._seq, sent_at_unix_s=time.time())
        obs = await self._bounded_observation()
        own: GpuTelemetry | None = None
        if obs is None or not self.backend_available:
            for prog in self.progress.values():
                prog.recheck = True
        if obs is None:
            # Still a report (a heartbeat): the controller sees why, not a silent agent.
            rep.backend_available = False
            rep.backend_message = self._stall_message()
        else:
            for mw in obs.models:
                rep.models.add(state=self._model_state(mw.info), window=window_to_pb(mw.window))
                self.metrics.window(mw.info.name, mw.info.knobs, mw.window)
                self._reconcile_if_drifted(mw.info)
            rep.backend_available = self.backend_available
            rep.backend_message = self.backend_message
            own = obs.telemetry
        self.metrics.backend_available.set(1 if rep.backend_available else 0)
        rep.gpu.CopyFrom(telemetry_to_pb(own if own is not None else self.telemetry.read()))
        return rep

    async def _bounded_observation(self) -> _Observed | None:
        """This report's observation, or None while the backend is not answering.

        The first report to find a call pending waits ``backend_timeout_s`` for it; later
        ones do not wait, so reports keep their cadence while the server hangs.
        """
        if self._observation is None:
            self._observation = asyncio.create_task(self._observe_backend())
            self._observation_started_s = time.monotonic()
        task = self._observation
        done, _ = await asyncio.wait(
            {task}, timeout=0 if self._stalled else self.config.backend_timeout_s
        )
        if not done:
            if not self._stalled:
                self.log.warning(
                    "backend_not_answering", backend=self.backend.kind, during="observe"
                )
            self._stalled = True
            return None
        self._observation = None
        result = task.result()  # a bug (not BackendUnavailable) fails this report, logged
        if self._stalled:
            # The pending call returned: with an answer, or with its own timeout's error.
            self.log.info(
                "backend_answering_again" if self.backend_available else "backend_call_gave_up",
                backend=self.backend.kind,
                stalled_s=round(time.monotonic() - self._observation_started_s, 1),
            )
        self._stalled = False
        return result

    async def _observe_backend(self) -> _Observed:
        """One observation: reconnect if the backend was down, then read every model."""
        models: list[ModelWindow] = []
        if self.backend_available or await self._ensure_backend():
            try:
                models = await self.backend.observe()
            except BackendUnavailable as e:
                self.log.warning("backend_unavailable", error=str(e))
                self.backend_available, self.backend_message = False, str(e)
        own = await self.backend.gpu_telemetry() if self.backend_available else None
        return _Observed(models, own)

    def _reconcile_if_drifted(self, info: ModelInfo) -> None:
        """After an outage of the server or of the model (a restart reads the repository's
        config, not the knobs the controller set), a model served with other knobs than
        the last update that landed is set back to them, in the background, with that
        update's generation. Not while an apply for the model runs or lands; the apply
        backoff holds back knobs that keep failing. Only after an outage: a server that
        stayed up is not second-guessed (a TorchServe worker count can lag an apply)."""
        prog = self.progress.get(info.name)
        if prog is None or not prog.recheck or prog.good_knobs is None or not info.available:
            return
        if prog.in_progress is not None:
            return
        if info.knobs == prog.good_knobs:
            prog.recheck = False
            return
        failed = prog.failed.get(prog.good_knobs)
        if failed is not None and time.monotonic() < failed.retry_at_s:
            return  # failed just now: the backoff says when to try again
        lock = self._apply_locks.setdefault(info.name, asyncio.Lock())
        if lock.locked():
            return
        task = asyncio.create_task(self._reconcile(info.name, prog.good_knobs, info.knobs))
        self._applies.add(task)
        task.add_done_callback(self._applies.discard)

    async def _reconcile(self, model: str, want: Knobs, found: Knobs) -> None:
        lock = self._apply_locks.setdefault(model, asyncio.Lock())
        prog = self.progress.setdefault(model, _ModelProgress())
        async with lock:
            if prog.good_knobs != want or prog.in_progress is not None:
                return  # a newer update got there first
            generation = prog.applied_generation
            mlog = self.log.bind(model=model, generation=generation)
            mlog.warning(
                "knobs_drifted_reapplying",
                found_batch=found.max_batch_size,
                found_instances=found.instances,
                want_batch=want.max_batch_size,
                want_instances=want.instances,
            )
            self.reconciles += 1
            outcome = await self._apply_gated(model, prog, want, mlog)
            if outcome.ok and outcome.in_progress:
                prog.in_progress = (generation, want)
            if outcome.ok:
                prog.recheck = False
            kind = "reconciled" if outcome.ok else "reconcile_failed"
            self.metrics.applies.labels(model, kind).inc()
            if not outcome.ok:
                mlog.warning("reconcile_failed", error=outcome.error)

    async def _apply(self, model: str, generation: int, knobs: Knobs) -> None:
        """Apply one update, idempotently by generation, one at a time per model.

        If the backend is still busy with an earlier change (e.g. a Triton instance decrease
        that blocks under load), the update is retried until it lands, a newer one
        supersedes it, or ``busy_retry_s`` passes; only then is the result reported.
        """
        lock = self._apply_locks.setdefault(model, asyncio.Lock())
        prog = self.progress.setdefault(model, _ModelProgress())
        mlog = self.log.bind(model=model, generation=generation)
        deadline = time.monotonic() + self.config.busy_retry_s
        first = True
        while True:
            async with lock:
                if first and generation <= prog.seen_generation:
                    mlog.info("update_already_seen", seen=prog.seen_generation)
                    return
                if not first and generation != prog.seen_generation:
                    mlog.info("update_superseded", seen=prog.seen_generation)
                    return
                prog.seen_generation = generation
                first = False
                outcome = await self._apply_gated(model, prog, knobs, mlog)
                busy = not outcome.ok and outcome.in_progress
                if not busy or time.monotonic() >= deadline:
                    self._record(model, prog, generation, knobs, outcome, mlog)
                    return
            mlog.info("backend_busy_retrying", error=outcome.error)
            await asyncio.sleep(self.config.busy_retry_interval_s)

    async def _apply_gated(
        self, model: str, prog: _ModelProgress, knobs: Knobs, mlog: Any
    ) -> ApplyOutcome:
        """``_apply_once``, unless these knobs failed at the server and their backoff has
        not passed: then the server is not touched and the answer says when they may be
        tried again. The outcome of a real attempt updates the backoff."""
        now = time.monotonic()
        failed = prog.failed.get(knobs)
        if failed is not None and now < failed.retry_at_s:
            self.held_back += 1
            wait_s = failed.retry_at_s - now
            return ApplyOutcome(
                ok=False,
                knobs_in_force=prog.good_knobs or await self._knobs_now(model, knobs),
                error=f"{HELD_BACK}: these knobs failed {failed.count} time(s) in a row;"
                f" next attempt in {wait_s:.1f} s",
            )
        self.apply_attempts += 1
        outcome = await self._apply_once(model, knobs, mlog)
        if outcome.ok:
            prog.failed.pop(knobs, None)
        elif not outcome.in_progress and not outcome.error.startswith("backend unavailable"):
            # The server took the attempt and refused it: back off before the next one.
            count = failed.count + 1 if failed is not None else 1
            delay = min(
                self.config.apply_backoff_initial_s * 2 ** (count - 1),
                self.config.apply_backoff_max_s,
            )
            prog.failed.pop(knobs, None)
            prog.failed[knobs] = _Failed(count, time.monotonic() + delay)
            while len(prog.failed) > MAX_FAILED_KNOBS:
                prog.failed.pop(next(iter(prog.failed)))
            mlog.info("apply_backoff", failures=count, retry_in_s=round(delay, 1))
        return outcome

    async def _apply_once(self, model: str, knobs: Knobs, mlog: Any) -> ApplyOutcome:
        try:
            return await self.backend.apply(model, knobs)
        except KnobRejected as e:
            return ApplyOutcome(
                ok=False, knobs_in_force=await self._knobs_now(model, knobs), error=str(e)
            )
        except BackendUnavailable as e:
            return ApplyOutcome(ok=False, knobs_in_force=knobs, error=f"backend unavailable: {e}")
        except Exception as e:  # never let one apply take the agent down
            mlog.exception("apply_crashed")
            return ApplyOutcome(
                ok=False, knobs_in_force=await self._knobs_now(model, knobs), error=repr(e)
            )

    def _record(
        self,
        model: str,
        prog: _ModelProgress,
        generation: int,
        knobs: Knobs,
        outcome: ApplyOutcome,
        mlog: Any,
    ) -> None:
        if outcome.ok and outcome.in_progress:
            prog.in_progress = (generation, knobs)
        elif outcome.ok:
            prog.applied_generation = generation
            prog.good_knobs = knobs
            prog.in_progress = None
        # "started": a background apply (a reload), counted "ok" when it lands.
        kind = ("started" if outcome.in_progress else "ok") if outcome.ok else "failed"
        if outcome.error.startswith(HELD_BACK):
            kind = "held_back"
        self.metrics.applies.labels(model, kind).inc()
        if outcome.ok:
            self.metrics.set_knobs(model, outcome.knobs_in_force)
            mlog.info(
                "applied",
                max_batch_size=outcome.knobs_in_force.max_batch_size,
                instances=outcome.knobs_in_force.instances,
                queue_delay_us=outcome.knobs_in_force.queue_delay_us,
                in_progress=outcome.in_progress,
            )
        else:
            mlog.warning("apply_failed", error=outcome.error)
        self._send(
            agent_pb2.AgentMessage(
                apply_result=agent_pb2.ApplyResult(
                    model=model,
                    generation=generation,
                    ok=outcome.ok,
                    knobs_in_force=knobs_to_pb(outcome.knobs_in_force),
                    error=outcome.error,
                    in_progress=outcome.in_progress,
                )
            )
        )

    async def _knobs_now(self, model: str, fallback: Knobs) -> Knobs:
        try:
            for m in await self.backend.list_models():
                if m.name == model:
                    return m.knobs
        except Exception:
            pass
        return fallback
