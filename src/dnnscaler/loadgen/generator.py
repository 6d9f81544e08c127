"""Open-loop Poisson and closed-loop load against Triton over gRPC (tritonclient.grpc.aio)
or TorchServe over HTTP (aiohttp; ``protocol="torchserve"``).

Open loop: arrivals are a Poisson process at ``rate_rps`` (changeable while running with
``set_rate``; the next gap is redrawn at once, which the memoryless process allows); each
arrival is sent whether or not earlier ones finished, up to ``max_in_flight`` (beyond it
arrivals are counted as ``dropped``, never queued client-side). Closed loop:
``concurrency`` workers each send the next request when the previous one returns.

Everything is bounded: ``max_requests`` sends and ``max_duration_s`` seconds, then the
generator stops by itself. Loopback only unless ``allow_remote`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import numpy as np

from dnnscaler.core.logging import get_logger
from dnnscaler.loadgen.stats import LoadWindow, summarize
from dnnscaler.triton.known_defects import only_upstream_defects

log = get_logger(__name__)

_NP_TYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT32": np.int32,
    "INT64": np.int64,
    "INT8": np.int8,
    "UINT8": np.uint8,
}


def check_loopback(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` (``host:port``) points at this machine."""
    host = url.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load generator targets loopback addresses only, not {host!r}")


@dataclass(frozen=True)
class RequestError:
    """One failed request: when it was sent and answered (seconds since the generator
    started), and what the client library said. Tests print these, not a count."""

    sent_s: float
    failed_s: float
    message: str

    def __str__(self) -> str:
        took = self.failed_s - self.sent_s
        return f"t={self.sent_s:.2f}s (+{took * 1000:.0f} ms): {self.message}"


MAX_ERRORS_KEPT = 50


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dimension


class LoadGen:
    """Drives one model; ``async with LoadGen(url, model, rate_rps=50) as g: ...``.

    Exactly one of ``rate_rps`` (open loop) and ``concurrency`` (closed loop) is used;
    ``rate_rps=0`` starts an idle open loop that ``set_rate`` wakes up. ``client`` injects
    an object with tritonclient.grpc.aio's ``get_model_metadata``/``infer`` (tests).

    ``protocol="torchserve"``: ``url`` is the inference API's ``http://host:port``; each
    request POSTs one input of ``input_shape`` float32 values as raw bytes to
    ``/predictions/MODEL`` (TorchServe has no metadata API that gives the shape; its
    batcher forms the batches, so ``batch`` must be 1). A non-200 answer is a failure,
    with the status and body as its message.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        rate_rps: float | None = None,
        concurrency: int | None = None,
        batch: int = 1,
        seed: int = 0,
        max_requests: int = 1_000_000,
        max_duration_s: float = 600.0,
        max_in_flight: int = 512,
        request_timeout_s: float = 30.0,
        allow_remote: bool = False,
        clock: Callable[[], float] = time.monotonic,
        client: Any = None,
        protocol: Literal["triton", "torchserve"] = "triton",
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        if (rate_rps is None) == (concurrency is None):
            raise ValueError("give exactly one of rate_rps (open loop) or concurrency")
        if not allow_remote:
            check_loopback(url)
        if protocol not in ("triton", "torchserve"):
            raise ValueError(f"unknown protocol {protocol!r}: triton or torchserve")
        if protocol == "torchserve" and (input_shape is None or batch != 1):
            raise ValueError("protocol torchserve needs input_shape and batch 1")
        self.url = url
        self.model = model
        self.protocol = protocol
        self.input_shape = input_shape
        self._http_body = b""
        self._http_url = ""
        self._rate = float(rate_rps or 0.0)
        self._concurrency = concurrency
        self.batch = batch
        self.max_requests = max_requests
        self.max_duration_s = max_duration_s
        self.max_in_flight = max_in_flight
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._client: Any = client
        self._own_client = client is None
        self._inputs: list[Any] = []
        self._outputs: list[Any] = []
        self._driver: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._rate_changed = asyncio.Event()
        self._stopping = False
        self._t0 = 0.0
        self._sent_total = 0
        self._err_total = 0
        self._drop_total = 0
        self._lat_total: list[float] = []
        self._win_start = 0.0
        self._win_sent = 0
        self._win_err = 0
        self._win_drop = 0
        self._win_lat: list[float] = []
        self._win_offered_integral = 0.0
        self._rate_since = 0.0
        self.last_error: str = ""
        # The first ``MAX_ERRORS_KEPT`` failures with their times (a count alone cannot
        # tell a reload race from a timeout or a stop).
        self.errors: list[RequestError] = []

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> LoadGen:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.protocol == "torchserve":
            await self._start_http()
        else:
            await self._start_grpc()
        now = self._clock()
        self._t0 = self._win_start = self._rate_since = now
        if self._concurrency is not None:
            self._driver = asyncio.create_task(self._closed_loop(self._concurrency))
        else:
            self._driver = asyncio.create_task(self._open_loop())
        log.info(
            "loadgen.started",
            model=self.model,
            rate_rps=self._rate if self._concurrency is None else None,
            concurrency=self._concurrency,
        )

    async def _start_http(self) -> None:
        import aiohttp

        shape = self.input_shape or ()
        self._http_body = self._rng.random(shape).astype("<f4").tobytes()
        base = self.url if "://" in self.url else f"http://{self.url}"
        self._http_url = f"{base.rstrip('/')}/predictions/{self.model}"
        if self._client is None:
            self._client = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_in_flight),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
            )

    async def _start_grpc(self) -> None:
        import tritonclient.grpc.aio as grpcclient

        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)
        meta = await self._client.get_model_metadata(self.model, as_json=True)
        specs = [
            InputSpec(i["name"], i["datatype"], tuple(int(d) for d in i["shape"][1:]))
            for i in meta["inputs"]
        ]
        self._inputs = []
        for spec in specs:
            dtype = _NP_TYPES.get(spec.datatype)
            if dtype is None:
                raise ValueError(f"{self.model}: input {spec.name} has type {spec.datatype}")
            shape = (self.batch, *(max(1, d) for d in spec.shape))
            inp = grpcclient.InferInput(spec.name, list(shape), spec.datatype)
            inp.set_data_from_numpy(self._rng.random(shape).astype(dtype))
            self._inputs.append(inp)
        self._outputs = [grpcclient.InferRequestedOutput(o["name"]) for o in meta["outputs"]]

    async def stop(self, drain_s: float = 10.0) -> None:
        """Stop sending, wait up to ``drain_s`` for requests in flight, close the client."""
        self._stopping = True
        self._rate_changed.set()
        if self._driver is not None:
            if self._concurrency is not None:  # workers finish their current request
                await asyncio.wait({self._driver}, timeout=drain_s)
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=drain_s)
            for t in late:
                t.cancel()
        if self._client is not None and self._own_client:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    @property
    def done(self) -> bool:
        """Whether the generator stopped sending (bound reached or stopped)."""
        return self._driver is not None and self._driver.done()

    @property
    def rate_rps(self) -> float:
        return self._rate

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def set_rate(self, rate_rps: float) -> None:
        """Change the open-loop arrival rate now (0 pauses arrivals)."""
        if self._concurrency is not None:
            raise RuntimeError("set_rate on a closed-loop generator")
        now = self._clock()
        self._win_offered_integral += self._rate * (now - max(self._rate_since, self._win_start))
        self._rate_since = now
        self._rate = max(0.0, float(rate_rps))
        self._rate_changed.set()

    # -- windows -----------------------------------------------------------------------
    def window(self) -> LoadWindow:
        """Summary of requests completed since the previous ``window()`` (or the start)."""
        now = self._clock()
        span = max(now - self._win_start, 1e-9)
        offered_integral = self._win_offered_integral + self._rate * (
            now - max(self._rate_since, self._win_start)
        )
        offered = offered_integral / span if self._concurrency is None else self._win_sent / span
        w = summarize(
            self._win_start,
            now,
            self._win_lat,
            sent=self._win_sent,
            errors=self._win_err,
            dropped=self._win_drop,
            offered_rps=offered,
            in_flight=len(self._tasks),
        )
        self._win_start = now
        self._win_sent = self._win_err = self._win_drop = 0
        self._win_lat = []
        self._win_offered_integral = 0.0
        return w

    def snapshot(self) -> LoadWindow:
        """Summary of everything since the start (windows are not reset)."""
        now = self._clock()
        span = max(now - self._t0, 1e-9)
        return summarize(
            self._t0,
            now,
            self._lat_total,
            sent=self._sent_total,
            errors=self._err_total,
            dropped=self._drop_total,
            offered_rps=self._sent_total / span,
            in_flight=len(self._tasks),
        )

    async def run_for(self, seconds: float) -> LoadWindow:
        """Start a fresh window, let the load run for ``seconds``, return that window."""
        self.window()
        await asyncio.sleep(seconds)
        return self.window()

    # -- sending -----------------------------------------------------------------------
    def _budget_left(self) -> bool:
        return (
            not self._stopping
            and self._sent_total < self.max_requests
            and self._clock() - self._t0 < self.max_duration_s
        )

    def _failed(self, sent_at: float, message: str) -> None:
        self._err_total += 1
        self._win_err += 1
        self.last_error = message
        if len(self.errors) < MAX_ERRORS_KEPT:
            now = self._clock() - self._t0
            self.errors.append(RequestError(sent_at - self._t0, now, message))

    def error_report(self, limit: int = 10) -> str:
        """The first failures, one a line, for a test's assertion message."""
        if not self._err_total:
            return "no failed request"
        lines = [str(e) for e in self.errors[:limit]]
        more = self._err_total - len(lines)
        return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")

    def upstream_defect(self) -> str | None:
        """What Triton did wrong when every failed request so far was its own defect
        (``dnnscaler.triton.known_defects``), else None: no failure, or one of another kind."""
        return only_upstream_defects(
            (e.message for e in self.errors), {i.name() for i in self._inputs}, self._err_total
        )

    async def _one(self) -> None:
        t0 = time.perf_counter()
        sent_at = self._clock()
        try:
            if self.protocol == "torchserve":
                await self._post()
            else:
                await self._client.infer(
                    self.model,
                    self._inputs,
                    outputs=self._outputs,
                    client_timeout=self.request_timeout_s,
                )
        except asyncio.CancelledError:  # stopped before the answer came: not a success
            self._failed(sent_at, "cancelled at stop")
            raise
        except Exception as exc:
            self._failed(sent_at, f"{type(exc).__name__}: {exc}")
            return
        lat = time.perf_counter() - t0
        self._lat_total.append(lat)
        self._win_lat.append(lat)

    async def _post(self) -> None:
        async with self._client.post(
            self._http_url,
            data=self._http_body,
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                text = body.decode(errors="replace").strip().replace("\n", " ")
                raise RuntimeError(f"HTTP {resp.status}: {text[:300]}")

    def _launch(self) -> None:
        self._sent_total += 1
        self._win_sent += 1
        task = asyncio.create_task(self._one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_loop(self) -> None:
        next_t = self._clock()
        while self._budget_left():
            rate = self._rate
            if rate <= 0:
                self._rate_changed.clear()
                await self._rate_changed.wait()
                next_t = self._clock()
                continue
            next_t += float(self._rng.exponential(1.0 / rate))
            now = self._clock()
            next_t = max(next_t, now - 0.5)  # never replay more than 0.5 s of backlog
            delay = next_t - now
            if delay > 0:
                self._rate_changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._rate_changed.wait(), timeout=delay)
                    next_t = self._clock()  # rate changed: redraw the gap from now
                    continue
            if len(self._tasks) >= self.max_in_flight:
                self._drop_total += 1
                self._win_drop += 1
                continue
            self._launch()

    async def _closed_loop(self, concurrency: int) -> None:
        async def worker() -> None:
            while self._budget_left():
                self._sent_total += 1
                self._win_sent += 1
                await self._one()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
