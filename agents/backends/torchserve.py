"""The agent's backend for a real TorchServe (management, metrics and access log).

Observe: the models and their default version's knobs from the management API (workers,
``batchSize``, ``maxBatchDelay``, the job queue's pending requests, summed over versions
while two serve); per-window counts and mean latencies by differencing the Prometheus
counters (kept across version swaps); completed and failed requests and the tail from the
frontend's access log, one line per request (``dnnscaler.torchserve.access_log``); batch
statistics (batches and compute time per batch size) from the counters the demo handler
adds to TorchServe's metrics (``handler._record_batch``; a handler without them leaves
them empty); for a server on this host, the host CPU busy share (its workers run on
these cores).

Apply, without dropping a request:

- **more workers**, nothing else: ``PUT /models/M/V?min_worker=N&max_worker=N`` (in place;
  new workers start beside the serving ones);
- **anything else** (batch size, batch delay, fewer workers): a second *version* of the
  model is registered with the new settings and its workers (``initial_workers``), made
  the default, the old version's queue is drained, and only then is it unregistered.
  TorchServe has no in-place API for the batch size, and scaling workers down in place
  killed an in-flight batch in about 1 of 3 tries ("Worker died."): a swap stops workers
  only once nothing is queued for them.

A failed step leaves the last good version serving: a registration that fails registers
nothing, a failed ``set-default`` unregisters the new version. A change that outlives
``blocking_wait_s`` finishes in the background and the outcome says ``in_progress``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

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
from dnnscaler.torchserve.access_log import AccessLogReader, AccessRecord
from dnnscaler.torchserve.archives import (
    LIMITS_SUFFIX,
    ArchiveError,
    other_version,
    read_limits,
    twin_archive,
)
from dnnscaler.torchserve.launcher import queue_delay_us, register_query
from dnnscaler.torchserve.metrics import Counters, parse_counters
from dnnscaler.triton.tracing import percentiles_ms

log = get_logger(__name__)

DEFAULT_LIMITS = KnobLimits(max_batch_size=64, max_instances=4, max_queue_delay_us=100_000)


class _ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()[:500]}")
        self.status = status


@dataclass(frozen=True)
class _Version:
    """One registered version of a model, as the management API describes it."""

    version: str
    url: str
    knobs: Knobs
    workers_ready: int
    pending: int


@dataclass
class _Pending:
    target: Knobs
    task: asyncio.Task[ApplyOutcome]
    started_s: float


@dataclass
class _ModelState:
    name: str
    default: _Version
    versions: list[_Version]
    limits: KnobLimits
    instance_memory_mb: float | None
    available: bool = True
    message: str = ""
    last_error: str = ""
    prev_counters: Counters | None = None
    prev_observe_s: float | None = None
    prev_wall_s: float | None = None
    records: list[AccessRecord] = field(default_factory=list)
    pending: _Pending | None = None


def knobs_of(desc: dict[str, Any]) -> Knobs:
    """A version's knobs from its description (``minWorkers`` is the worker count asked)."""
    return Knobs(
        max_batch_size=max(1, int(desc.get("batchSize", 1))),
        instances=max(1, int(desc.get("minWorkers", 1))),
        queue_delay_us=queue_delay_us(int(desc.get("maxBatchDelay", 1))),
    )


def _version_of(desc: dict[str, Any]) -> _Version:
    workers = desc.get("workers") or []
    return _Version(
        version=str(desc.get("modelVersion", "")),
        url=str(desc.get("modelUrl", "")),
        knobs=knobs_of(desc),
        workers_ready=sum(1 for w in workers if w.get("status") == "READY"),
        pending=int((desc.get("jobQueueStatus") or {}).get("pendingRequests", 0) or 0),
    )


def _fmt(k: Knobs) -> str:
    return f"b{k.max_batch_size} n{k.instances} d{k.queue_delay_us // 1000}ms"


class TorchServeBackend:
    """``Backend`` for one TorchServe reached at ``management_url``.

    ``access_log``: the frontend's ``access_log.log`` on this host (the tail latency and
    per-request status); ``None`` leaves percentiles ``None`` and failures uncounted.
    ``model_store``: the server's model store on this host, needed for any change but
    more workers (the twin archive is written there) and read for the models' declared
    limits (``NAME.dnnscaler.json``; else ``default_limits``).
    """

    kind = "torchserve"

    def __init__(
        self,
        management_url: str,
        metrics_url: str | None = None,
        *,
        access_log: str | Path | None = None,
        model_store: str | Path | None = None,
        memory_budget_mb: float | None = None,
        default_limits: KnobLimits = DEFAULT_LIMITS,
        request_timeout_s: float = 10.0,
        register_timeout_s: float = 300.0,
        blocking_wait_s: float = 60.0,
        drain_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        cpu_meter: HostCpuMeter | Literal["auto"] | None = "auto",
    ) -> None:
        self.management_url = management_url.rstrip("/")
        self.metrics_url = metrics_url
        self.model_store = Path(model_store) if model_store is not None else None
        self.memory_budget_mb = memory_budget_mb
        self.default_limits = default_limits
        self.request_timeout_s = request_timeout_s
        self.register_timeout_s = register_timeout_s
        self.blocking_wait_s = blocking_wait_s
        self.drain_timeout_s = drain_timeout_s
        self._clock = clock
        self._wall = wall_clock
        self._reader = AccessLogReader(access_log) if access_log is not None else None
        self._session: aiohttp.ClientSession | None = None
        self._models: dict[str, _ModelState] = {}
        self._started_s: float | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._log = log.bind(backend="torchserve", url=self.management_url)
        if cpu_meter == "auto":
            cpu_meter = HostCpuMeter() if is_loopback(self.management_url) else None
        self._cpu = cpu_meter

    # -- HTTP ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        await self._json("GET", "/models?limit=1")  # raises BackendUnavailable
        if self._reader is not None:
            self._reader.start()
        self._started_s = self._clock()
        await self.list_models()
        counters = await self._counters()
        wall = self._wall()
        for st in self._models.values():
            st.prev_counters = counters.get(st.name, Counters())
            st.prev_wall_s = wall

    async def close(self) -> None:
        for st in self._models.values():
            if st.pending is not None and not st.pending.task.done():
                st.pending.task.cancel()
                with contextlib.suppress(BaseException):
                    await st.pending.task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(
        self, method: str, path: str, timeout_s: float | None = None
    ) -> tuple[int, str]:
        if self._session is None:
            raise BackendUnavailable("backend not started")
        url = path if path.startswith("http") else f"{self.management_url}{path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.request_timeout_s)
        try:
            async with self._session.request(method, url, timeout=timeout) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            raise BackendUnavailable(f"TorchServe at {self.management_url}: {exc}") from exc
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"TorchServe at {self.management_url}: {method} {path} timed out"
            ) from exc

    async def _json(self, method: str, path: str, timeout_s: float | None = None) -> Any:
        import json

        status, body = await self._call(method, path, timeout_s)
        if not 200 <= status < 300:  # 202: accepted, workers start in the background
            raise _ApiError(status, body)
        return json.loads(body) if body.strip() else None

    # -- discovery -----------------------------------------------------------------------
    async def _names(self) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            query = "?limit=100" + (f"&next_page_token={token}" if token else "")
            page = await self._json("GET", f"/models{query}")
            names += [str(m["modelName"]) for m in page.get("models", [])]
            token = str(page.get("nextPageToken") or "")
            if not token:
                return names

    async def _describe(self, name: str) -> list[_Version] | None:
        """All registered versions of ``name``, default first; ``None`` if it is gone."""
        quoted = urllib.parse.quote(name)
        try:
            default = await self._json("GET", f"/models/{quoted}")
            every = await self._json("GET", f"/models/{quoted}/all")
        except _ApiError as exc:
            if exc.status == 404:
                return None
            raise BackendUnavailable(f"describing {name}: {exc}") from exc
        if not default:
            return None
        first = _version_of(default[0])
        others = [
            _version_of(d) for d in every or [] if str(d.get("modelVersion")) != first.version
        ]
        return [first, *others]

    def _declared(self, name: str) -> tuple[KnobLimits, float | None]:
        if self.model_store is not None:
            try:
                declared = read_limits(self.model_store / f"{name}{LIMITS_SUFFIX}")
            except ArchiveError as exc:
                self._log.warning(
                    "torchserve_backend.limits_unreadable", model=name, error=str(exc)
                )
                declared = None
            if declared is not None:
                return (
                    KnobLimits(
                        declared.max_batch_size,
                        declared.max_instances,
                        declared.max_queue_delay_us,
                    ),
                    declared.instance_memory_mb,
                )
        return self.default_limits, None

    async def list_models(self) -> list[ModelInfo]:
        try:
            names = await self._names()
        except _ApiError as exc:
            raise BackendUnavailable(f"listing models: {exc}") from exc
        for name in names:
            st = self._models.get(name)
            versions = await self._describe(name)
            if versions is None:
                continue
            if st is None:
                limits, mem = self._declared(name)
                st = _ModelState(name, versions[0], versions, limits, mem)
                st.prev_observe_s = self._started_s
                self._models[name] = st
                self._log.info(
                    "torchserve_backend.model_found", model=name, knobs=versions[0].knobs
                )
            else:  # mid-change too: what the server says is in force is what is true
                if not st.available:
                    self._log.info("torchserve_backend.model_back", model=name)
                st.default, st.versions = versions[0], versions
                st.available, st.message = True, ""
        for name, st in self._models.items():
            if name not in names and st.available:
                st.available = False
                st.message = "model no longer registered"
        for st in self._models.values():
            self._harvest(st)
        return [self._info(st) for st in self._models.values()]

    def _limits(self, st: _ModelState) -> KnobLimits:
        """Declared limits, with workers capped by the memory budget if one is set."""
        used = sum(
            (m.instance_memory_mb or 0.0) * m.default.knobs.instances
            for m in self._models.values()
            if m.available and m.name != st.name
        )
        return within_memory_budget(st.limits, st.instance_memory_mb, self.memory_budget_mb, used)

    def _info(self, st: _ModelState) -> ModelInfo:
        message = st.message
        if st.pending is not None and not st.pending.task.done():
            message = f"change to {_fmt(st.pending.target)} in progress" + (
                f"; {message}" if message else ""
            )
        elif st.last_error and st.available:
            message = f"last apply failed: {st.last_error}"
        return ModelInfo(
            name=st.name,
            knobs=st.default.knobs,
            limits=self._limits(st),
            instance_memory_mb=st.instance_memory_mb,
            available=st.available,
            message=message,
        )

    def _harvest(self, st: _ModelState) -> None:
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
            self._log.warning(
                "torchserve_backend.background_change_failed", model=st.name, error=exc
            )
            return
        result = pending.task.result()
        st.last_error = "" if result.ok else result.error
        self._log.info(
            "torchserve_backend.background_change_done",
            model=st.name,
            ok=result.ok,
            knobs=result.knobs_in_force,
            took_s=round(self._clock() - pending.started_s, 2),
        )

    # -- observation ---------------------------------------------------------------------
    async def _counters(self) -> dict[str, Counters]:
        if not self.metrics_url:
            return {}
        try:
            status, text = await self._call("GET", self.metrics_url)
        except BackendUnavailable:
            return {}
        return parse_counters(text) if status == 200 else {}

    async def observe(self) -> list[ModelWindow]:
        infos = {i.name: i for i in await self.list_models()}
        records = await asyncio.to_thread(self._reader.poll) if self._reader is not None else []
        for rec in records:
            st = self._models.get(rec.model)
            if st is not None:
                st.records.append(rec)
        counters = await self._counters()
        cpu_busy = self._cpu.sample() if self._cpu is not None else None
        now, wall = self._clock(), self._wall()
        out: list[ModelWindow] = []
        for name, st in self._models.items():
            start = st.prev_observe_s if st.prev_observe_s is not None else now
            window_s = max(now - start, 1e-9)
            st.prev_observe_s = now
            # A request belongs to the window it completed in, as a client counts it.
            after = st.prev_wall_s
            mine = [r for r in st.records if after is None or r.end_s > after]
            st.records = []
            st.prev_wall_s = wall
            cum = counters.get(name)
            delta = cum.minus(st.prev_counters) if cum is not None else None
            if cum is not None:
                st.prev_counters = cum
            if not st.available:
                out.append(ModelWindow(infos[name], WindowStats(window_s=window_s)))
                continue
            window = self._window(mine, delta, window_s, sum(v.pending for v in st.versions))
            if cpu_busy is not None:
                window = WindowStats(**{**window.__dict__, "device_busy_share": cpu_busy})
            out.append(ModelWindow(infos[name], window))
        return out

    def _window(
        self,
        records: list[AccessRecord],
        delta: Counters | None,
        window_s: float,
        pending: int,
    ) -> WindowStats:
        if self._reader is not None:
            ok = [r.latency_ms for r in records if r.ok]
            completed, failed = len(ok), len(records) - len(ok)
        else:
            ok, failed = [], 0
            completed = int(delta.requests) if delta is not None else 0
        tail = percentiles_ms(ok)
        mean = delta.mean_ms(delta.latency_us) if delta is not None else None
        if mean is None and tail is not None:
            mean = tail[3]
        return WindowStats(
            window_s=window_s,
            completed=completed,
            failed=failed,
            throughput_rps=completed / window_s,
            latency_mean_ms=mean if completed else None,
            latency_p50_ms=tail[0] if tail else None,
            latency_p95_ms=tail[1] if tail else None,
            latency_p99_ms=tail[2] if tail else None,
            queue_mean_ms=delta.mean_ms(delta.queue_us) if delta is not None else None,
            compute_mean_ms=delta.compute_mean_ms() if delta is not None else None,
            pending_requests=pending,
            batch_stats=delta.batch_stats() if delta is not None else {},
        )

    # -- apply ---------------------------------------------------------------------------
    async def apply(self, model: str, knobs: Knobs) -> ApplyOutcome:
        st = self._models.get(model)
        if st is None:
            await self.list_models()
            st = self._models.get(model)
        if st is None:
            raise KnobRejected(f"{model}: not served by TorchServe at {self.management_url}")
        try:
            knobs.validate(self._limits(st))
        except InvalidValue as exc:
            raise KnobRejected(f"{model}: {exc}") from exc
        if knobs.queue_delay_us % 1000:
            raise KnobRejected(
                f"{model}: queue_delay_us {knobs.queue_delay_us} is not whole milliseconds"
                " (TorchServe's max_batch_delay is in ms)"
            )
        self._harvest(st)
        if st.pending is not None:
            if st.pending.target == knobs:
                return ApplyOutcome(ok=True, knobs_in_force=st.default.knobs, in_progress=True)
            return ApplyOutcome(
                ok=False,
                knobs_in_force=st.default.knobs,
                in_progress=True,
                error=f"change to {_fmt(st.pending.target)} still in progress",
            )
        if not st.available:
            return ApplyOutcome(ok=False, knobs_in_force=st.default.knobs, error=st.message)
        versions = await self._describe(model)
        if versions is None:
            st.available, st.message = False, "model no longer registered"
            return ApplyOutcome(ok=False, knobs_in_force=st.default.knobs, error=st.message)
        st.default, st.versions = versions[0], versions
        current = st.default.knobs
        if current == knobs and len(versions) == 1:
            st.last_error = ""
            return ApplyOutcome(ok=True, knobs_in_force=current)
        self._log.info("torchserve_backend.apply", model=model, old=current, new=knobs)
        task = asyncio.create_task(self._change(st, knobs), name=f"torchserve-apply-{model}")
        st.pending = _Pending(target=knobs, task=task, started_s=self._clock())
        await asyncio.wait({task}, timeout=self.blocking_wait_s)
        if not task.done():
            return ApplyOutcome(ok=True, knobs_in_force=current, in_progress=True)
        st.pending = None
        result = task.result()  # BackendUnavailable propagates to the caller
        st.last_error = "" if result.ok else result.error
        return result

    async def _change(self, st: _ModelState, target: Knobs) -> ApplyOutcome:
        lock = self._locks.setdefault(st.name, asyncio.Lock())
        async with lock:
            cur = st.default
            stale = list(st.versions[1:])
            if (
                not stale
                and target.max_batch_size == cur.knobs.max_batch_size
                and target.queue_delay_us == cur.knobs.queue_delay_us
                and target.instances > cur.knobs.instances
            ):
                error = await self._scale_up(st.name, cur, target.instances)
            else:
                error = await self._swap(st, cur, stale, target)
            versions = await self._describe(st.name)
            if versions is None:
                st.available = False
                st.message = f"model unavailable after a change: {error or 'not registered'}"
                return ApplyOutcome(False, cur.knobs, st.message)
            st.default, st.versions = versions[0], versions
            in_force = versions[0].knobs
            if not error and in_force != target:
                error = f"read back {_fmt(in_force)} instead of {_fmt(target)}"
            if error:
                st.last_error = error
            return ApplyOutcome(ok=not error, knobs_in_force=in_force, error=error)

    def _path(self, name: str, version: str) -> str:
        return f"/models/{urllib.parse.quote(name)}/{urllib.parse.quote(version)}"

    async def _scale_up(self, name: str, cur: _Version, workers: int) -> str:
        query = urllib.parse.urlencode(
            {"min_worker": workers, "max_worker": workers, "synchronous": "false"}
        )
        try:
            await self._json("PUT", f"{self._path(name, cur.version)}?{query}")
        except _ApiError as exc:
            self._log.warning("torchserve_backend.scale_failed", model=name, error=str(exc))
            return f"scaling to {workers} workers failed: {exc}"
        return await self._await_workers(name, cur.version, workers)

    async def _await_workers(self, name: str, version: str, workers: int) -> str:
        """Poll until ``version`` has ``workers`` READY workers (asynchronous calls answer
        before the workers start; see ``register_query``)."""
        deadline = self._clock() + self.register_timeout_s
        path = self._path(name, version)
        last = "not described yet"
        while self._clock() < deadline:
            try:
                desc = await self._json("GET", path)
            except _ApiError as exc:
                last = str(exc)
            else:
                if desc:
                    v = _version_of(desc[0])
                    if v.workers_ready >= workers:
                        return ""
                    last = f"{v.workers_ready} of {workers} workers ready"
            await asyncio.sleep(0.1)
        return f"version {version} of {name}: {last} after {self.register_timeout_s:.0f} s"

    async def _swap(
        self, st: _ModelState, cur: _Version, stale: list[_Version], target: Knobs
    ) -> str:
        """Register the other version with ``target``, make it the default, drain and
        unregister the old one. Any failure before the default moved keeps ``cur``."""
        name = st.name
        if self.model_store is None:
            return "this change needs a new model version: the agent needs the model store"
        for old in stale:  # a version left over by an earlier, interrupted swap
            await self._unregister(name, old)
        new_version = other_version(cur.version)
        try:
            twin = await asyncio.to_thread(twin_archive, self.model_store, cur.url, new_version)
        except ArchiveError as exc:
            return f"no archive for version {new_version}: {exc}"
        query = register_query(twin, target, model_name=name, synchronous=False)
        try:
            await self._json("POST", f"/models?{query}")
        except _ApiError as exc:
            error = str(exc)
        else:
            error = await self._await_workers(name, new_version, target.instances)
        if error:
            self._log.warning("torchserve_backend.register_failed", model=name, error=error)
            leftover = await self._describe(name)
            for v in (leftover or [])[1:]:
                if v.version == new_version:
                    await self._unregister(name, v)
            return (
                f"registering version {new_version} failed: {error};"
                f" version {cur.version} keeps serving"
            )
        try:
            await self._json("PUT", f"{self._path(name, new_version)}/set-default")
        except _ApiError as exc:
            self._log.warning("torchserve_backend.set_default_failed", model=name, error=str(exc))
            await self._unregister(name, _Version(new_version, twin, target, 0, 0))
            return (
                f"making version {new_version} the default failed: {exc};"
                f" version {cur.version} keeps serving"
            )
        await self._drain(name, cur)
        await self._unregister(name, cur)
        return ""

    async def _drain(self, name: str, old: _Version) -> None:
        """Wait until nothing is queued for ``old`` (new requests already go elsewhere)."""
        deadline = self._clock() + self.drain_timeout_s
        path = self._path(name, old.version)
        while self._clock() < deadline:
            try:
                desc = await self._json("GET", path)
            except _ApiError:
                return
            if not desc or _version_of(desc[0]).pending == 0:
                # The batch a worker holds is out of the queue: give it time to finish.
                await asyncio.sleep(0.5)
                return
            await asyncio.sleep(0.05)
        self._log.warning("torchserve_backend.drain_timeout", model=name, version=old.version)

    async def _unregister(self, name: str, old: _Version) -> None:
        try:
            await self._json(
                "DELETE",
                f"{self._path(name, old.version)}?synchronous=true",
                self.register_timeout_s,
            )
        except _ApiError as exc:
            self._log.warning(
                "torchserve_backend.unregister_failed",
                model=name,
                version=old.version,
                error=str(exc),
            )

    async def gpu_telemetry(self) -> GpuTelemetry | None:
        return None
