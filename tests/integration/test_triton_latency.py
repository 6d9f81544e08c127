"""The agent's tail latency is the server's: it agrees with Triton's own, independent count.

The SLO bounds server-side latency (``core.types.SLO_LATENCY``, docs/operations.md): the
agent reads Triton's request traces (``GRPC_WAITREAD_END`` -> ``GRPC_SEND_END``). The
independent measurement inside the server is Triton's Prometheus summary
``nv_inference_request_summary_us``: CKMS quantile sketches over *every* request, no
traces, reset when the model is loaded, covering all requests since then for its first 60 s.

Like with like, whatever the box's speed: one window holds exactly the requests of one
load burst (its last traces written out before they are read: ``_flush_traces``), and the
test checks three links, each on the same requests:

1. *The agent computes what the traces say.* The backend keeps its trace files here
   (``keep_trace_files``); the test parses them itself and takes the burst's requests (by
   completion time, as the agent does). The agent's p99 equals theirs.
2. *The traces miss no slow request.* The summary times each request inside its
   ``REQUEST_START`` -> ``REQUEST_END`` span, and ``REQUEST_START`` follows
   ``GRPC_WAITREAD_END``; but ``REQUEST_END`` (the request's release) comes *after*
   ``GRPC_SEND_END`` in 20-45 % of requests, by up to 4.3 ms (measured 12-03 at 100-350
   rps), so the agent's span does not contain the summary's. The span that does, request
   by request, runs from ``GRPC_WAITREAD_END`` to the later of the two ends; its p99 over
   the traced requests lies above the summary's quantile at ``0.99 - delta``. (Until
   12-03 the test assumed the agent's span contained the summary's; 1 run in 17 read the
   agent 0.1 ms under the summary, and the frontend's share at p99 read as low as -0.24 ms.)
3. *The agent's span is inside the client's*: its p99 lies below the client's exact
   quantile at ``0.99 + delta``, over the same requests.

The comparisons are made in *rank* space: a sample quantile of ``n`` traced requests out of
the ``N`` the summary counted has a share of requests below it that is Beta-distributed
around 0.99 with standard deviation ``sqrt(p (1 - p) (1 - n/N) / n)``; ``delta`` is 3.29 of
those (a two-sided false-failure rate of 1 in 1,000), plus the sketch's rank error and one
request. A box that slows down moves all of them together.

The frontend's share (agent minus summary) and the client path (client minus agent) at the
p99 are recorded as JUnit properties, for the SLO's documentation.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from server_support import once_more_if_the_server_failed

from dnnscaler.agents.backends.triton import TritonBackend
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs, WindowStats
from dnnscaler.loadgen import LoadGen
from dnnscaler.loadgen.stats import LoadWindow
from dnnscaler.triton.install import triton_installed
from dnnscaler.triton.launcher import LocalTriton

pytestmark = [
    pytest.mark.slow,
    pytest.mark.triton,
    pytest.mark.skipif(not triton_installed(), reason="nvidia-pytriton not installed"),
]

TRITON_DEMO_MODELS = ["serial_io", "wide_mlp"]
# The summary's quantiles: the band's lower edge is one of these (rank error 0.0005).
QUANTILES = (0.5, 0.95, 0.975, 0.98, 0.9825, 0.985, 0.9875, 0.99)
SKETCH_EPS = 0.0005
TRITON_EXTRA_ARGS = [
    "--metrics-config=summary_latencies=true",
    "--metrics-config=summary_quantiles="
    + ",".join(f"{q}:{0.01 if q == 0.5 else SKETCH_EPS}" for q in QUANTILES),
]
WINDOW_S = 8.0  # under the summary's first age-bucket rotation horizon (60 s)
Z_1_IN_1000 = 3.29  # two-sided normal quantile for a false-failure rate of 1e-3
MIN_SAMPLES = 300  # fewer traced requests than this: the host could not offer the load
log = get_logger(__name__)


@asynccontextmanager
async def tracing_backend(server: LocalTriton, budget_rps: float) -> AsyncIterator[TritonBackend]:
    """The agent's backend on ``server``, keeping its trace files (the test reads the same
    traces: link 1)."""
    b = TritonBackend(
        server.grpc_url,
        server.metrics_url,
        trace_budget_rps=budget_rps,
        keep_trace_files=True,
    )
    await b.start()
    try:
        yield b
    finally:
        await b.close()


async def _trace_rate(server: LocalTriton) -> int:
    """The server's trace rate, read by a client independent of the backend."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        settings = await client.get_trace_settings(as_json=True)
        return int(settings["settings"]["trace_rate"]["value"][0])
    finally:
        await client.close()


async def _flush_traces(server: LocalTriton) -> None:
    """Have the server write out the traces it still holds.

    Triton writes a trace group to its file every ``log_frequency`` traces; when the load
    stops, the last group (up to ``log_frequency - 1`` traced requests, the burst's last
    1/8 s) stays in memory. Replacing the trace setting writes it (the replaced setting's
    destructor saves what it holds), so the same ``log_frequency`` is set again. Without
    this the test's sample left out the burst's end: 1 to 18 of ~800 traced requests in 12
    bursts of 12-06, and a slow cluster there (the top 1 % of requests comes in clusters:
    the cold start after the reload and host stalls of 5-20 consecutive requests) went
    untraced: gate run 5 of 12-05 read the traced p99 0.11 ms under the summary's 0.975
    quantile, 15 traced requests short."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        settings = await client.get_trace_settings(as_json=True)
        frequency = settings["settings"]["log_frequency"]["value"][0]
        await client.update_trace_settings(settings={"log_frequency": frequency})
    finally:
        await client.close()


def request_summary(metrics_text: str, model: str) -> tuple[int, dict[float, float]]:
    """``nv_inference_request_summary_us`` of ``model``: (count, {quantile: ms})."""
    count = 0
    quantiles: dict[float, float] = {}
    pattern = r"^nv_inference_request_summary_us(_count)?\{([^}]*)\}\s+(\S+)"
    for m in re.finditer(pattern, metrics_text, re.M):
        labels = m.group(2)
        if f'model="{model}"' not in labels:
            continue
        if m.group(1):
            count += int(float(m.group(3)))
            continue
        q = re.search(r'quantile="([^"]+)"', labels)
        if q is not None and not math.isnan(float(m.group(3))):
            quantiles[float(q.group(1))] = float(m.group(3)) / 1000.0
    return count, quantiles


def band(n: int, population: int, p: float = 0.99) -> tuple[float, float]:
    """The ranks between which a sample p-quantile of ``n`` of ``population`` requests
    falls but once in 1,000 (normal approximation to its Beta law, finite population),
    widened by the sketch's rank error and one request."""
    f = min(1.0, n / max(population, 1))
    sd = math.sqrt(p * (1 - p) * (1 - f) / max(n, 1))
    delta = Z_1_IN_1000 * sd + SKETCH_EPS + 1.0 / max(n, 1)
    return p - delta, p + delta


def traced_spans(prefix: Path, model: str, after_ns: int) -> tuple[list[float], list[float]]:
    """``model``'s traced requests that completed after ``after_ns``, parsed here from the raw
    trace files: (the agent's span, the span that contains the summary's), in ms.

    Deliberately not ``triton.tracing.requests_from_entries``: link 1 checks that code."""
    stamps: dict[int, dict[str, int]] = {}
    names: dict[int, str] = {}
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for e in entries:
            tid = int(e.get("id", -1))
            if "model_name" in e:
                names[tid] = str(e["model_name"])
            for t in e.get("timestamps", ()):
                stamps.setdefault(tid, {})[str(t["name"])] = int(t["ns"])
    agent: list[float] = []
    union: list[float] = []
    keys = ("GRPC_WAITREAD_END", "GRPC_SEND_END", "REQUEST_START", "REQUEST_END")
    for tid, st in stamps.items():
        if names.get(tid) != model or not all(k in st for k in keys):
            continue
        if st["GRPC_SEND_END"] <= after_ns:
            continue
        start, send_end = st["GRPC_WAITREAD_END"], st["GRPC_SEND_END"]
        assert st["REQUEST_START"] >= start, st  # the summary's span starts inside ours
        agent.append((send_end - start) / 1e6)
        union.append((max(send_end, st["REQUEST_END"]) - start) / 1e6)
    return agent, union


def summary_rank_below(rank: float) -> float:
    """The highest of the summary's quantiles at or under ``rank`` (conservative)."""
    return max((q for q in QUANTILES if q <= rank), default=QUANTILES[0])


@dataclass(frozen=True)
class Measured:
    agent: WindowStats
    client: LoadWindow
    summary_count: int
    summary_ms: dict[float, float]
    trace_rate: int
    log_tail: str
    traced_ms: list[float]  # the agent's span of each traced request, parsed by the test
    union_ms: list[float]  # ... to the later of GRPC_SEND_END and REQUEST_END
    failed_requests: str  # the client's failures: when (since the burst began) and why

    @property
    def samples(self) -> int:
        """Traced requests of the burst: what the agent's percentile rests on."""
        return len(self.traced_ms)

    def describe(self) -> str:
        q = {k: round(v, 2) for k, v in self.summary_ms.items()}
        return (
            f"agent p99 {self.agent.latency_p99_ms} ms over ~{self.samples} traced of"
            f" {self.agent.completed}; summary of {self.summary_count}: {q};"
            f" client p99 {self.client.latency_p99_ms} ms, sent {self.client.sent},"
            f" completed {self.client.completed}, errors {self.client.errors}"
            f" (offered {self.client.offered_rps:.0f} rps over {self.client.duration_s:.1f} s);"
            f" trace rate 1 in {self.trace_rate}"
        )


async def _reload_fresh(server: LocalTriton, model: str) -> None:
    """Unload and load ``model`` with its config in force: Triton's summary starts afresh."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        cfg = (await client.get_model_config(model, as_json=True))["config"]
        await client.unload_model(model)
        # Not ready comes at once; the old instances (and the summary they report to) go
        # only when the index says UNAVAILABLE. Loading before that reuses the summary.
        for _ in range(300):
            index = await client.get_model_repository_index(as_json=True)
            states = {m.get("name"): m.get("state") for m in index.get("models", [])}
            if states.get(model) == "UNAVAILABLE":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{model} did not unload in 30 s: {states}; {server.log_tail()}")
        await client.load_model(model, config=json.dumps(cfg))
    finally:
        await client.close()


def _metrics(server: LocalTriton) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        return str(resp.read().decode())


async def _measure(
    backend: TritonBackend, server: LocalTriton, model: str, rate_rps: float, seed: int
) -> Measured:
    # Warm up at the rate: the backend sets its trace sampling for it (and keeps it: the
    # rate falls only once the peak of the last 10 observations allows).
    async with LoadGen(server.grpc_url, model, rate_rps=rate_rps, seed=seed) as gen:
        for _ in range(3):
            await asyncio.sleep(1.0)
            await backend.observe()
    assert gen.snapshot().errors == 0, gen.error_report()
    await _reload_fresh(server, model)
    await backend.observe()  # the baseline: the window starts before the first request
    after_ns = time.monotonic_ns()  # trace timestamps are CLOCK_MONOTONIC
    async with LoadGen(server.grpc_url, model, rate_rps=rate_rps, seed=seed + 1) as gen:
        await asyncio.sleep(WINDOW_S)
    # The load has stopped and drained: the window and the summary hold the same requests.
    client = gen.snapshot()
    await asyncio.sleep(0.5)
    await _flush_traces(server)
    agent = {w.info.name: w.window for w in await backend.observe()}[model]
    count, quantiles = request_summary(await asyncio.to_thread(_metrics, server), model)
    assert server.trace_file is not None
    traced, union = traced_spans(server.trace_file, model, after_ns)
    return Measured(
        agent,
        client,
        count,
        quantiles,
        await _trace_rate(server),
        server.log_tail(5),
        traced,
        union,
        gen.error_report(),
    )


@pytest.mark.parametrize(
    ("model", "knobs", "rate_rps", "budget_rps"),
    [
        ("serial_io", Knobs(max_batch_size=1, instances=4), 150.0, 250.0),  # instance-heavy
        ("wide_mlp", Knobs(max_batch_size=16, instances=1), 120.0, 250.0),  # batching-heavy
        # Sampled: a budget of 150 traced requests a second at 300 rps traces 1 in 2 or 3.
        ("wide_mlp", Knobs(max_batch_size=16, instances=1), 300.0, 150.0),
    ],
    ids=["serial_io", "wide_mlp", "wide_mlp-sampled"],
)
async def test_agent_p99_matches_server_p99(
    triton_server: LocalTriton,
    model: str,
    knobs: Knobs,
    rate_rps: float,
    budget_rps: float,
    margin: Callable[..., None],
    record_property: Callable[[str, object], None],
    request: pytest.FixtureRequest,
) -> None:
    # Measured again, once, on a fresh server if this one crashes or hangs under it (Triton
    # 2.51 with tracing on, docs/triton.md; landing CI of db51790: the repository index
    # unanswered for 30 s in wide_mlp-sampled), recorded with the server's log.
    async def body() -> None:
        async with tracing_backend(triton_server, budget_rps) as backend:
            await _agree(backend, triton_server, model, knobs, rate_rps, margin, record_property)

    await once_more_if_the_server_failed(triton_server, request, body)


async def _agree(
    backend: TritonBackend,
    triton_server: LocalTriton,
    model: str,
    knobs: Knobs,
    rate_rps: float,
    margin: Callable[..., None],
    record_property: Callable[[str, object], None],
) -> None:
    outcome = await backend.apply(model, knobs)
    for _ in range(60):
        if not outcome.in_progress:
            break
        await asyncio.sleep(0.5)
        outcome = await backend.apply(model, knobs)
    assert outcome.ok, outcome.error
    for attempt in (1, 2):
        got = await _measure(backend, triton_server, model, rate_rps, seed=7 + 10 * attempt)
        # Judgeable only if the box offered the load: enough traced requests for a tail.
        if got.samples >= MIN_SAMPLES and got.summary_count >= MIN_SAMPLES:
            break
        print(f"{model}: attempt {attempt} cannot be judged (host too slow?): {got.describe()}")
    else:
        pytest.xfail(f"{model}: the host could not offer the load twice: {got.describe()}")
    why = f"{model}: {got.describe()}; server log tail: {got.log_tail}"
    assert got.client.errors == 0 and got.agent.failed == 0, (
        f"{why}; failed requests: {got.failed_requests}; {got.client}"
    )
    # The server traces 1 in ceil(measured rps / budget); a Poisson load's measured rate is
    # within 20 % of the offered one here.
    budget = backend.trace_budget_rps or rate_rps
    lo_rate, hi_rate = (max(1, math.ceil(f * rate_rps / budget)) for f in (0.8, 1.2))
    assert lo_rate <= got.trace_rate <= hi_rate, why
    # The sample is the burst's every trace_rate-th request, all of them (_flush_traces):
    # the bands below assume no part of the burst went untraced.
    expected = got.summary_count / got.trace_rate
    record_property("traced_short_of_expected", round(expected - got.samples, 1))
    assert abs(got.samples - expected) <= 2, f"{got.samples} traced, {expected:.1f} expected: {why}"
    a = got.agent
    assert a.latency_p99_ms is not None, f"the agent must report a p99: {why}"
    assert a.latency_p50_ms is not None and a.latency_p95_ms is not None, why
    assert a.completed > 0 and a.throughput_rps > 0, why
    assert a.batch_stats and a.queue_mean_ms is not None, why
    # Both count the same requests (Triton's statistics and its summary: one burst).
    assert a.completed == got.summary_count == got.client.completed, why
    # Link 1: the agent's p99 is the traces' (parsed here), over the same requests.
    traced_p99 = float(np.percentile(got.traced_ms, 99))
    assert a.latency_p99_ms == pytest.approx(traced_p99, abs=1e-6), (
        f"agent p99 {a.latency_p99_ms} ms, its traces' {traced_p99} ms: {why}"
    )
    lo_rank, hi_rank = band(got.samples, got.summary_count)
    lo = summary_rank_below(lo_rank)
    assert lo in got.summary_ms and 0.99 in got.summary_ms, why
    # Link 2: the traced span that contains the summary's, over the traced requests, against
    # the summary (whole microseconds) at the lower rank.
    union_p99 = float(np.percentile(got.union_ms, 99))
    low_ms = got.summary_ms[lo] - 0.001
    # Link 3: the client's exact quantile at the upper rank, over the same requests.
    high_ms = float(np.quantile(got.client.latencies_ms, min(hi_rank, 1.0)))
    server_ms = got.summary_ms[0.99]
    log.info(
        "p99_agreement",
        model=model,
        agent_ms=round(a.latency_p99_ms, 2),
        union_ms=round(union_p99, 2),
        server_ms=round(server_ms, 2),
        band_ms=(round(low_ms, 2), round(high_ms, 2)),
        ranks=(lo, round(hi_rank, 4)),
        client_ms=got.client.latency_p99_ms,
        samples=got.samples,
    )
    print(
        f"{model}: agent p99 {a.latency_p99_ms:.2f} ms (to the later end {union_p99:.2f} ms),"
        f" server (summary) p99 {server_ms:.2f} ms, client p99"
        f" {got.client.latency_p99_ms:.2f} ms; summary at {lo} {low_ms:.2f} ms, client at"
        f" {hi_rank:.4f} {high_ms:.2f} ms; {got.samples} traced of {got.summary_count}"
    )
    # The frontend's share (the agent's span minus the summary's) and the client path (the
    # client's minus the agent's), at the p99: what each span adds, for the record.
    record_property("frontend_ms_at_p99", round(a.latency_p99_ms - server_ms, 3))
    record_property("client_path_ms_at_p99", round(got.client.latency_p99_ms - a.latency_p99_ms, 3))
    record_property("release_after_send_ms_at_p99", round(union_p99 - a.latency_p99_ms, 3))
    margin("traces_over_summary", union_p99, low=low_ms)
    margin("agent_under_client", a.latency_p99_ms, high=high_ms)
    assert union_p99 >= low_ms, f"the traces' p99 under the server's own count: {why}"
    assert a.latency_p99_ms <= high_ms, f"agent p99 over the client's: {why}"
