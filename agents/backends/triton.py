"""The agent's backend for a real Triton Inference Server (gRPC, explicit model control).

Observe: the repository index (READY models), each model's config as read back from the
server (the knobs actually in force), per-window statistics by differencing the cumulative
inference statistics (reset on a full reload is handled), tail latency from Triton's
request trace files when the server writes them on this host, and the pending-request
gauge from the metrics endpoint. For CPU-kind models on a local server, the host CPU busy
share (``device_busy_share``): on a CPU the cores are the device, and a saturated one gains
nothing from another instance.

Apply: validate against the model's declared limits first (``KnobRejected`` before any
call), then ``get_model_config`` → edit → ``load_model(config=...)`` with the whole config
(an override replaces, it does not merge), then read back. An instance-count decrease
blocks inside Triton while the model is busy, so it runs in the background and the
outcome says ``in_progress``; later observes and applies see it. A failed load leaves or
restores the last good config and reports the error. A model unloaded behind our back is
reported unavailable, never re-created.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import tritonclient.grpc.aio as grpcclient
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from tritonclient.utils import InferenceServerException

from dnnscaler.agents.backend import (
    ApplyOutcome,
    BackendUnavailable,
    KnobRejected,
    ModelInfo,
    ModelWindow,
    within_memory_budget,
)
from dnnscaler.agents.host_cpu import HostCpuMeter
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import GpuTelemetry, InvalidValue, KnobLimits, Knobs, WindowStats
from dnnscaler.security.credentials import is_loopback
from dnnscaler.triton.model_config import (
    ChangeKind,
    Config,
    Declared,
    change_kind,
    config_with_knobs,
    declared_from_config,
    knobs_from_config,
    runs_on_cpu,
)
from dnnscaler.triton.statistics import Cumulative, WindowCounter
from dnnscaler.triton.tracing import (
    TracedRequest,
    TraceReader,
    percentiles_ms,
    sampling_settings,
)

log = get_logger(__name__)

_UNAVAILABLE_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")
STATS_WATCH_S = 0.1  # statistics read this often while a reload of ours runs


class _Transient(Exception):
    """A read call failed because the server could not be reached (retried, then mapped)."""


def _is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        text = str(exc)
        return any(code in status for code in _UNAVAILABLE_CODES) or (
            "failed to connect" in text.lower() or "connection refused" in text.lower()
        )
    return False


@dataclass(frozen=True)
class _LoadResult:
    ok: bool
    knobs_in_force: Knobs
    error: str = ""


@dataclass
class _Pending:
    target: Knobs
    task: asyncio.Task[_LoadResult]
    kind: ChangeKind
    started_s: float


@dataclass
class _ModelState:
    name: str
    config: Config
    knobs: Knobs
    declared: Declared
    first_max_batch: int = 1
    available: bool = True
    message: str = ""
    # The window's request counts, across the counter resets of full reloads; every
    # statistics reading is taken and counted under ``stats_lock``, in the server's order.
    counter: WindowCounter = field(default_factory=WindowCounter)
    stats_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    prev_observe_s: float | None = None
    prev_observe_ns: int | None = None
    pending: _Pending | None = None
    last_error: str = ""
    traced: list[TracedRequest] = field(default_factory=list)


class TritonBackend:
    """``Backend`` for one Triton server reached at ``grpc_url`` (``host:port``).

    ``trace_file``: ``"auto"`` asks the server where it writes request traces and uses
    them when the path is on this host; a path forces one; ``None`` disables tail latency
    from traces (percentiles are then ``None``). ``trace_budget_rps``: requests a second to
    trace (the server's trace rate is set to 1 in N to match; ``None`` leaves it): Triton
    2.51 crashes under tracing at a rate that grows with the traced requests, and a tail
    needs a few hundred samples a window, not all. ``memory_budget_mb`` caps the sum of
    ``instances * instance_memory_mb`` over all models (CPU hosts have no NVML).
    ``cpu_meter``: ``"auto"`` reads this host's CPUs when the server is on loopback (its
    CPU-kind instances then run here); ``None`` never reports a device busy share.
    ``keep_trace_files``: leave the trace files in place after reading them (an audit of
    the percentiles against the raw traces; they accumulate, ~30 KB per 20 requests).
    """

    kind = "triton"

    def __init__(
        self,
        grpc_url: str,
        metrics_url: str | None = None,
        *,
        trace_file: str | Path | Literal["auto"] | None = "auto",
        memory_budget_mb: float | None = None,
        request_timeout_s: float = 10.0,
        load_timeout_s: float = 300.0,
        blocking_wait_s: float = 60.0,
        default_max_instances: int = 10,
        instance_changes: Literal["reload", "in-place"] = "reload",
        adapt_trace_frequency: bool = True,
        trace_budget_rps: float | None = 250.0,
        clock: Callable[[], float] = time.monotonic,
        cpu_meter: HostCpuMeter | Literal["auto"] | None = "auto",
        keep_trace_files: bool = False,
    ) -> None:
        self.grpc_url = grpc_url
        self.metrics_url = metrics_url
        self._trace_arg = trace_file
        self.keep_trace_files = keep_trace_files
        self.memory_budget_mb = memory_budget_mb
        self.request_timeout_s = request_timeout_s
        self.load_timeout_s = load_timeout_s
        self.blocking_wait_s = blocking_wait_s
        self.default_max_instances = default_max_instances
        self.instance_changes = instance_changes
        self._reloads = 0
        self.adapt_trace_frequency = adapt_trace_frequency
        self.trace_budget_rps = trace_budget_rps
        self._clock = clock
        self._client: grpcclient.InferenceServerClient | None = None
        self._models: dict[str, _ModelState] = {}
        self._trace: TraceReader | None = None
        self._trace_log_frequency: int | None = None
        self._trace_rate: int | None = None
        self._recent_rps: collections.deque[float] = collections.deque(maxlen=10)
        self._started_s: float | None = None
        self._was_down = False
        self._log = log.bind(backend="triton", url=grpc_url)
        if cpu_meter == "auto":
            cpu_meter = HostCpuMeter() if self._is_local() else None
        self._cpu = cpu_meter

    # -- connection --------------------------------------------------------------------
    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            raise BackendUnavailable("backend not started")
        return self._client

    async def start(self) -> None:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.grpc_url)
        live = await self._read(lambda c: c.is_server_live(client_timeout=self.request_timeout_s))
        if not live:
            raise BackendUnavailable(f"Triton at {self.grpc_url} is not live")
        self._started_s = self._clock()
        await self._setup_tracing()
        await self.list_models()
        await self._baseline()
        self._log.info("triton_backend.started", models=sorted(self._models))

    async def _baseline(self) -> None:
        """Take every model's counters now: the first window must not count the requests
        a long-running server served before this backend started (an agent restart read
        them as one window of a few seconds: thousands of requests a second that never
        were, which the policy would have learned from)."""
        for name, st in self._models.items():
            if not st.available or st.counter.started:
                continue
            try:
                async with st.stats_lock:
                    resp = await self._stats(name)
                    st.counter.take(Cumulative.parse(resp.get("model_stats", [])))
            except InferenceServerException:
                continue  # observe() takes the baseline instead
            st.prev_observe_s = self._clock()
            st.prev_observe_ns = time.monotonic_ns()

    async def close(self) -> None:
        for st in self._models.values():
            if st.pending is not None and not st.pending.task.done():
                st.pending.task.cancel()
                with contextlib.suppress(BaseException):
                    await st.pending.task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    async def _read(self, call: Callable[[grpcclient.InferenceServerClient], Any]) -> Any:
        """A read-only call: retried briefly when unreachable, then ``BackendUnavailable``."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    try:
                        return await call(self.client)
                    except Exception as exc:
                        if _is_unreachable(exc):
                            raise _Transient(str(exc)) from exc
                        raise
        except _Transient as exc:
            raise BackendUnavailable(f"Triton at {self.grpc_url} unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    async def _setup_tracing(self) -> None:
        """Find the server's trace files (auto) and start reading from what comes next."""
        if self._trace_arg is None:
            return
        path: Path | None
        if self._trace_arg == "auto":
            path = None
            if not self._is_local():
                return
            settings = await self._read(
                lambda c: c.get_trace_settings(as_json=True, client_timeout=self.request_timeout_s)
            )
            values = {k: v.get("value", []) for k, v in settings.get("settings", {}).items()}
            files = values.get("trace_file") or []
            levels = values.get("trace_level") or []
            if files and files[0] and "TIMESTAMPS" in levels:
                path = Path(files[0])
                freq = values.get("log_frequency") or ["0"]
                self._trace_log_frequency = int(freq[0]) if freq[0] else 0
                rate = values.get("trace_rate") or ["1"]
                self._trace_rate = int(rate[0]) if rate[0] else 1
        else:
            path = Path(self._trace_arg)
        if self._trace is not None and path == self._trace.prefix:
            return
        if path is None or not path.parent.is_dir():
            self._log.warning("triton_backend.no_trace_file", hint="percentiles unavailable")
            return
        self._trace = TraceReader(path, delete=not self.keep_trace_files)
        self._trace.discard_existing()
        self._log.info("triton_backend.tracing", prefix=str(path))

    def _is_local(self) -> bool:
        return is_loopback(self.grpc_url)

    # -- discovery ---------------------------------------------------------------------
    async def list_models(self) -> list[ModelInfo]:
        index = await self._read(
            lambda c: c.get_model_repository_index(
                as_json=True, client_timeout=self.request_timeout_s
            )
        )
        states: dict[str, tuple[str, str]] = {}
        for entry in index.get("models", []):
            name = str(entry.get("name", ""))
            state = str(entry.get("state", ""))
            reason = str(entry.get("reason", ""))
            if name and (name not in states or state == "READY"):
                states[name] = (state, reason)
        for name, (state, reason) in states.items():
            st = self._models.get(name)
            busy = st is not None and st.pending is not None and not st.pending.task.done()
            if state == "READY":
                cfg = await self._get_config(name)
                if cfg is None:
                    continue
                self._remember(name, cfg)
            elif st is not None and not busy:
                st.available = False
                st.message = f"model is {state or 'gone'}" + (f": {reason}" if reason else "")
        for name, st in self._models.items():
            if name not in states and st.available:
                st.available = False
                st.message = "model no longer in the repository"
        for st in self._models.values():
            self._harvest(st)
        return [self._info(st) for st in self._models.values()]

    async def _get_config(self, name: str) -> Config | None:
        try:
            resp = await self._read(
                lambda c: c.get_model_config(
                    name, as_json=True, client_timeout=self.request_timeout_s
                )
            )
        except InferenceServerException as exc:  # unloaded between index and config
            self._log.info("triton_backend.config_unreadable", model=name, error=str(exc))
            return None
        cfg: Config = resp.get("config", {})
        return cfg

    def _remember(self, name: str, cfg: Config) -> _ModelState:
        st = self._models.get(name)
        knobs = knobs_from_config(cfg)
        if st is None:
            st = _ModelState(
                name=name,
                config=cfg,
                knobs=knobs,
                declared=declared_from_config(cfg, self.default_max_instances),
                first_max_batch=max(1, int(cfg.get("max_batch_size", 0))),
                prev_observe_s=self._started_s,
            )
            self._models[name] = st
            self._log.info("triton_backend.model_found", model=name, knobs=knobs)
        else:
            st.declared = declared_from_config(
                cfg, self.default_max_instances, default_max_batch=st.first_max_batch
            )
            if not st.available:
                self._log.info("triton_backend.model_back", model=name)
            st.available = True
            st.message = ""
            st.config = cfg
            st.knobs = knobs
        return st

    def _limits(self, st: _ModelState) -> KnobLimits:
        """Declared limits, with instances capped by the memory budget if one is set."""
        used = sum(
            (m.declared.instance_memory_mb or 0.0) * m.knobs.instances
            for m in self._models.values()
            if m.available and m.name != st.name
        )
        return within_memory_budget(
            st.declared.limits, st.declared.instance_memory_mb, self.memory_budget_mb, used
        )

    def _info(self, st: _ModelState) -> ModelInfo:
        message = st.message
        if st.pending is not None and not st.pending.task.done():
            message = f"{st.pending.kind.value} to {_fmt(st.pending.target)} in progress" + (
                f"; {message}" if message else ""
            )
        elif st.last_error and st.available:
            message = f"last apply failed: {st.last_error}"
        return ModelInfo(
            name=st.name,
            knobs=st.knobs,
            limits=self._limits(st),
            instance_memory_mb=st.declared.instance_memory_mb,
            available=st.available,
            message=message,
        )

    def _harvest(self, st: _ModelState) -> None:
        """Collect the result of a finished background change."""
        pending = st.pending
        if pending is None or not pending.task.done():
            return
        st.pending = None
        if pending.task.cancelled():
            st.last_error = "change cancelled"
            return
        exc = pending.task.exception()
        if exc is not None:
            st.last_error = f"{type(exc).__name__}: {exc}"
            self._log.warning("triton_backend.background_change_failed", model=st.name, error=exc)
            return
        result = pending.task.result()
        st.last_error = "" if result.ok else result.error
        self._log.info(
            "triton_backend.background_change_done",
            model=st.name,
            ok=result.ok,
            knobs=result.knobs_in_force,
            took_s=round(self._clock() - pending.started_s, 2),
        )

    # -- observation -------------------------------------------------------------------
    async def observe(self) -> list[ModelWindow]:
        try:
            if self._was_down:  # the server may have been restarted with new trace settings
                await self._setup_tracing()
                self._was_down = False
            infos = {i.name: i for i in await self.list_models()}
        except BackendUnavailable:
            self._was_down = True
            raise
        now_ns = time.monotonic_ns()
        # Parsing can take tens of ms at high rates: keep it off the event loop.
        traced = await asyncio.to_thread(self._trace.poll) if self._trace is not None else []
        same_clock = bool(traced) and abs(max(r.end_ns for r in traced) - now_ns) < 300e9
        for req in traced:
            st = self._models.get(req.model)
            if st is not None:
                st.traced.append(req)
        pending_gauge = await self._pending_requests()
        cpu_busy = self._cpu.sample() if self._cpu is not None else None
        now = self._clock()
        out: list[ModelWindow] = []
        total_rate = 0.0
        for name, st in self._models.items():
            start = st.prev_observe_s if st.prev_observe_s is not None else now
            window_s = max(now - start, 1e-9)
            st.prev_observe_s = now
            if not st.available:
                st.traced.clear()
                out.append(ModelWindow(infos[name], WindowStats(window_s=window_s)))
                continue
            try:
                async with st.stats_lock:
                    resp = await self._stats(name)
                    delta, resets = st.counter.take(Cumulative.parse(resp.get("model_stats", [])))
            except InferenceServerException as exc:
                self._log.info("triton_backend.stats_unreadable", model=name, error=str(exc))
                out.append(ModelWindow(infos[name], WindowStats(window_s=window_s)))
                continue
            if delta is None:
                # No baseline yet (found after start): this window only takes one.
                st.prev_observe_ns = now_ns
                st.traced = []
                out.append(ModelWindow(infos[name], WindowStats(window_s=window_s)))
                continue
            if resets:
                # A full reload restarted the counters; what the old instances served since
                # the last observation is in the window when a reload of ours watched them.
                self._log.info("triton_backend.stats_reset", model=name, resets=resets)
            if same_clock and st.prev_observe_ns is not None:
                # Attribute requests by completion time, as a client does: drop those that
                # finished in an earlier window but were flushed to the trace file late.
                st.traced = [r for r in st.traced if r.end_ns > st.prev_observe_ns]
            st.prev_observe_ns = now_ns
            window = self._window(delta, st.traced, window_s, pending_gauge.get(name))
            if cpu_busy is not None and runs_on_cpu(st.config):
                window = replace(window, device_busy_share=cpu_busy)
            total_rate += window.throughput_rps
            st.traced = []
            out.append(ModelWindow(infos[name], window))
        await self._adapt_tracing(total_rate)
        return out

    async def _stats(self, name: str) -> dict[str, Any]:
        resp: dict[str, Any] = await self._read(
            lambda c: c.get_inference_statistics(
                name, as_json=True, client_timeout=self.request_timeout_s
            )
        )
        return resp

    def _window(
        self,
        delta: Cumulative,
        traced: list[TracedRequest],
        window_s: float,
        pending: int | None,
    ) -> WindowStats:
        completed = delta.success.count
        tail = percentiles_ms([r.latency_ms for r in traced])
        mean = tail[3] if tail else delta.mean_ms(delta.success)
        return WindowStats(
            window_s=window_s,
            completed=completed,
            failed=delta.fail.count,
            throughput_rps=completed / window_s,
            latency_mean_ms=mean,
            latency_p50_ms=tail[0] if tail else None,
            latency_p95_ms=tail[1] if tail else None,
            latency_p99_ms=tail[2] if tail else None,
            queue_mean_ms=delta.mean_ms(delta.queue),
            compute_mean_ms=(
                delta.compute.ns / completed / 1e6 if completed and delta.compute.ns else None
            ),
            pending_requests=pending,
            batch_stats=delta.batch_stats(),
        )

    async def _adapt_tracing(self, total_rps: float) -> None:
        """Trace about ``trace_budget_rps`` requests a second (1 in N), flushed ~8 times a
        second so each window has fresh tail samples (``tracing.sampling_settings``)."""
        if not self.adapt_trace_frequency or self._trace is None:
            return
        peak = max(self._recent_rps, default=0.0)
        self._recent_rps.append(total_rps)
        change = sampling_settings(
            total_rps, self.trace_budget_rps, self._trace_rate, self._trace_log_frequency, peak
        )
        if not change:
            return
        try:
            await self.client.update_trace_settings(
                settings={k: str(v) for k, v in change.items()},
                client_timeout=self.request_timeout_s,
            )
        except InferenceServerException as exc:
            self._log.info("triton_backend.trace_settings_unchanged", error=str(exc))
            return
        self._trace_rate = change.get("trace_rate", self._trace_rate)
        self._trace_log_frequency = change.get("log_frequency", self._trace_log_frequency)
        if "trace_rate" in change:
            self._log.info("triton_backend.trace_rate", rate=self._trace_rate, rps=round(total_rps))

    async def _pending_requests(self) -> dict[str, int]:
        if self.metrics_url is None:
            return {}
        url = self.metrics_url
        if urlparse(url).scheme not in ("http", "https"):
            return {}
        try:
            text = await asyncio.to_thread(_fetch, url, self.request_timeout_s)
        except (OSError, urllib.error.URLError, ValueError):
            return {}
        return parse_pending(text)

    # -- apply -------------------------------------------------------------------------
    async def apply(self, model: str, knobs: Knobs) -> ApplyOutcome:
        st = self._models.get(model)
        if st is None:
            await self.list_models()
            st = self._models.get(model)
        if st is None:
            raise KnobRejected(f"{model}: not served by Triton at {self.grpc_url}")
        try:
            knobs.validate(self._limits(st))
        except InvalidValue as exc:
            raise KnobRejected(f"{model}: {exc}") from exc
        self._harvest(st)
        if st.pending is not None:
            if st.pending.target == knobs:
                return ApplyOutcome(ok=True, knobs_in_force=st.knobs, in_progress=True)
            return ApplyOutcome(
                ok=False,
                knobs_in_force=st.knobs,
                in_progress=True,
                error=f"{st.pending.kind.value} to {_fmt(st.pending.target)} still in progress",
            )
        if not st.available:
            return ApplyOutcome(ok=False, knobs_in_force=st.knobs, error=st.message)
        cfg = await self._get_config(model)
        if cfg is None:
            st.available = False
            st.message = "model config unreadable (unloaded?)"
            return ApplyOutcome(ok=False, knobs_in_force=st.knobs, error=st.message)
        self._remember(model, cfg)
        current = knobs_from_config(cfg)
        kind = change_kind(current, knobs)
        if kind is ChangeKind.NONE:
            st.last_error = ""
            return ApplyOutcome(ok=True, knobs_in_force=current)
        new_cfg = config_with_knobs(cfg, knobs)
        if self.instance_changes == "reload" and kind in (
            ChangeKind.INSTANCES_UP,
            ChangeKind.INSTANCES_DOWN,
        ):
            # Triton 2.51 crashed (SIGSEGV) on in-place instance increases under load with a
            # queue delay set, and in-place decreases block under load: a full reload (new
            # instances start beside the old ones) avoids both. Bumping a parameter makes
            # Triton reload rather than edit the instance group in place.
            self._reloads += 1
            params = dict(new_cfg.get("parameters") or {})
            params["dnnscaler.reload"] = {"string_value": f"{time.time_ns()}-{self._reloads}"}
            new_cfg["parameters"] = params
            kind = ChangeKind.RELOAD
        self._log.info(
            "triton_backend.apply", model=model, change=kind.value, old=current, new=knobs
        )
        task = asyncio.create_task(self._load(st, new_cfg, cfg, knobs), name=f"load-{model}")
        pending = _Pending(target=knobs, task=task, kind=kind, started_s=self._clock())
        st.pending = pending
        wait_s = 0.0 if kind is ChangeKind.INSTANCES_DOWN else self.blocking_wait_s
        if wait_s > 0:
            await asyncio.wait({task}, timeout=wait_s)
        if not task.done():
            return ApplyOutcome(ok=True, knobs_in_force=current, in_progress=True)
        st.pending = None
        result = task.result()  # BackendUnavailable propagates to the caller
        st.last_error = "" if result.ok else result.error
        return ApplyOutcome(ok=result.ok, knobs_in_force=result.knobs_in_force, error=result.error)

    async def _load(
        self, st: _ModelState, new_cfg: Config, good_cfg: Config, target: Knobs
    ) -> _LoadResult:
        """Load ``new_cfg``; on failure make sure ``good_cfg`` is what serves. Reads back."""
        name = st.name
        error = ""
        watch = asyncio.create_task(self._watch_stats(st), name=f"stats-{name}")
        try:
            await self.client.load_model(
                name, config=json.dumps(new_cfg), client_timeout=self.load_timeout_s
            )
        except Exception as exc:
            if _is_unreachable(exc) and not isinstance(exc, asyncio.TimeoutError):
                raise BackendUnavailable(f"Triton at {self.grpc_url}: {exc}") from exc
            error = f"load failed: {exc}"
            self._log.warning("triton_backend.load_failed", model=name, error=str(exc))
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        cfg = await self._get_config(name)
        if error:
            if cfg is None or knobs_from_config(cfg) != knobs_from_config(good_cfg):
                try:
                    await self.client.load_model(
                        name, config=json.dumps(good_cfg), client_timeout=self.load_timeout_s
                    )
                    error += "; restored the last good config"
                except Exception as exc:
                    error += f"; restoring the last good config failed too: {exc}"
                cfg = await self._get_config(name)
            else:
                error += "; the last good config keeps serving"
        if cfg is None:
            st.available = False
            st.message = f"model unavailable after a change: {error or 'config unreadable'}"
            return _LoadResult(False, st.knobs, st.message)
        self._remember(name, cfg)
        in_force = knobs_from_config(cfg)
        if not error and in_force != target:
            error = f"read back {_fmt(in_force)} instead of {_fmt(target)}"
        if error:
            st.last_error = error
        return _LoadResult(ok=not error, knobs_in_force=in_force, error=error)

    async def _watch_stats(self, st: _ModelState) -> None:
        """While a reload of ours runs: count the model's statistics every
        ``STATS_WATCH_S`` (``WindowCounter.saw``), so that a reset (a full reload starts
        the counters again) finds the old instances' last count, and the next window still
        holds what they served. It watches until the load returns, through any number of
        resets (a failed load and its restore are two). Unreadable readings are skipped:
        the window then misses up to one interval more."""
        while True:
            if st.counter.started:
                with contextlib.suppress(
                    InferenceServerException, BackendUnavailable, TimeoutError
                ):
                    async with st.stats_lock:
                        resp = await self._stats(st.name)
                        st.counter.saw(Cumulative.parse(resp.get("model_stats", [])))
            await asyncio.sleep(STATS_WATCH_S)

    async def gpu_telemetry(self) -> GpuTelemetry | None:
        return None


def _fmt(k: Knobs) -> str:
    return f"(batch {k.max_batch_size}, instances {k.instances}, delay {k.queue_delay_us} us)"


def _fetch(url: str, timeout_s: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        body: bytes = resp.read()
    return body.decode("utf-8", errors="replace")


_PENDING_RE = re.compile(
    r"^nv_inference_pending_request_count\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.eE+-]+)", re.M
)
_MODEL_LABEL_RE = re.compile(r'model="(?P<model>[^"]*)"')


def parse_pending(metrics_text: str) -> dict[str, int]:
    """``nv_inference_pending_request_count`` per model (summed over versions)."""
    out: dict[str, int] = {}
    for m in _PENDING_RE.finditer(metrics_text):
        label = _MODEL_LABEL_RE.search(m.group("labels"))
        if label is None:
            continue
        name = label.group("model")
        out[name] = out.get(name, 0) + int(float(m.group("value")))
    return out
