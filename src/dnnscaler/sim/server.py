"""A discrete-event model of one inference server (Triton-like) on one simulated GPU.

Requests arrive (open-loop Poisson or closed-loop), wait in one FIFO queue, and are taken by a
dynamic batcher: when an instance is free, a batch is dispatched as soon as ``max_batch_size``
requests are queued or the oldest has waited ``queue_delay_us`` (zero delay: dispatch at once
with what is queued). ``n`` instances run batches concurrently and contend for the GPU:

Contention model. A batch of ``b`` runs at speed ``1 / latency_ms(b, m)`` where ``m`` is the
number of instances busy *right now* (``Profile.latency_ms``), times a lognormal jitter drawn per
batch and the interference factor. When ``m`` changes (a batch starts or ends) or the
interference factor changes, the remaining work of every running batch is rescaled to the new
speed (processor-sharing style). With ``k`` instances kept busy at batch 1 this reproduces the
profile's measured ``lat_k_ms[k-1]``.

Reconfiguration model (``set_knobs``): an instance-count-only change takes effect after
``instance_change_s`` (0.2 s; Triton adds instances in place in 0.1-0.3 s); any change of batch
size or queue delay is a full reload that takes effect after ``reload_s`` (1.5 s), during which
the old config keeps serving and GPU memory holds both configs. At the switch, running batches
finish normally; removed instances finish their batch and retire. Nothing is dropped.

Time is virtual: ``advance_to`` runs events up to a time. Events are dispatches and
completions only; arrivals are pre-drawn (numpy) and found by bisection, so a batch costs
O(instances) Python work whatever its size.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from dnnscaler.core.types import BatchStat, GpuTelemetry, InvalidValue, Knobs, WindowStats
from dnnscaler.sim.profile import Profile

_INF = math.inf
_CHUNK = 4096


@dataclass(frozen=True)
class ReconfigTiming:
    """How long knob changes take to come into force (seconds of server time)."""

    instance_change_s: float = 0.2
    reload_s: float = 1.5


@dataclass(frozen=True)
class WindowSample:
    """A window's statistics plus the raw per-request latencies (ms), for benchmarks."""

    stats: WindowStats
    latencies_ms: np.ndarray


class SimServer:
    """One model served on one simulated GPU, in virtual time."""

    def __init__(
        self,
        profile: Profile,
        knobs: Knobs,
        *,
        seed: int,
        now_s: float = 0.0,
        timing: ReconfigTiming | None = None,
    ) -> None:
        knobs.validate(profile.limits())
        self.profile = profile
        self.timing = timing or ReconfigTiming()
        self._rng = np.random.default_rng(seed)
        self._lat = profile.latency_table()
        self._kmax = len(profile.lat_k_ms)
        self.now_s = now_s
        self._knobs = knobs
        self._pending: Knobs | None = None
        self._pending_at = _INF
        self._reloading = False
        self._interference = 1.0
        # Requests: arrival times (s); index ``_base + i`` is request ``i`` in the list.
        self._arr: list[float] = []
        self._head = 0  # oldest request not yet dispatched (list index)
        self._dropped = 0  # requests compacted out of the list
        self._rate = 0.0
        self._closed = 0  # closed-loop concurrency (0: open loop)
        self._next_arrival = _INF  # open loop: first arrival not yet drawn into _arr
        self._jit: list[float] = []
        # Instance slots: batch size running (0 = idle), completion time, dispatch time, start.
        nslots = self._kmax
        self._sb = [0] * nslots
        self._sdone = [_INF] * nslots
        self._sdisp = [0.0] * nslots
        self._sstart = [0] * nslots
        self._busy = 0
        # Window accumulators.
        self._win_start = now_s
        self._w_done: list[float] = []
        self._w_disp: list[float] = []
        self._w_start: list[int] = []
        self._w_b: list[int] = []
        self._busy_since = now_s
        self._busy_time = 0.0
        self._last_util = 0.0

    # ---------------------------------------------------------------- public controls
    @property
    def knobs(self) -> Knobs:
        """The knobs in force now (what a read-back of the server would say)."""
        return self._knobs

    @property
    def pending_knobs(self) -> Knobs | None:
        return self._pending

    @property
    def interference(self) -> float:
        return self._interference

    @property
    def arrival_rate_rps(self) -> float:
        return self._rate

    def set_knobs(self, knobs: Knobs) -> None:
        """Request a reconfiguration (see the module docstring for its timing)."""
        knobs.validate(self.profile.limits())
        cur = self._knobs
        if knobs == cur:
            self._pending, self._pending_at, self._reloading = None, _INF, False
            return
        reload = (knobs.max_batch_size, knobs.queue_delay_us) != (
            cur.max_batch_size,
            cur.queue_delay_us,
        )
        if self._pending is not None and self._reloading:
            reload = True  # a reload already under way keeps its reload semantics
        delay = self.timing.reload_s if reload else self.timing.instance_change_s
        self._pending, self._pending_at, self._reloading = knobs, self.now_s + delay, reload

    def set_arrival_rate(self, rps: float) -> None:
        """Open-loop Poisson arrivals at ``rps`` from now on; 0 stops arrivals."""
        if not (math.isfinite(rps) and rps >= 0):
            raise InvalidValue("rate_rps", f"must be >= 0, got {rps}")
        self._drop_future_arrivals()
        self._closed = 0
        self._rate = float(rps)
        self._next_arrival = self.now_s + self._exp() if rps > 0 else _INF

    def set_closed_loop(self, concurrency: int) -> None:
        """Keep ``concurrency`` requests outstanding (zero think time); stops open-loop load."""
        if concurrency < 0:
            raise InvalidValue("concurrency", f"must be >= 0, got {concurrency}")
        self._drop_future_arrivals()
        self._rate = 0.0
        self._next_arrival = _INF
        self._closed = int(concurrency)
        missing = concurrency - self._outstanding()
        if missing > 0:
            self._arr.extend([self.now_s] * missing)

    def set_interference(self, factor: float) -> None:
        """Slow the GPU by ``factor`` (1.0 = alone on the GPU) from now on."""
        if not (math.isfinite(factor) and factor > 0):
            raise InvalidValue("interference", f"must be > 0, got {factor}")
        if factor != self._interference:
            scale = factor / self._interference
            now = self.now_s
            for i, b in enumerate(self._sb):
                if b:
                    self._sdone[i] = now + (self._sdone[i] - now) * scale
            self._interference = float(factor)

    # ---------------------------------------------------------------- arrivals
    def _exp(self) -> float:
        return float(self._rng.exponential(1.0 / self._rate))

    def _outstanding(self) -> int:
        return (len(self._arr) - self._head) + sum(self._sb)

    def _drop_future_arrivals(self) -> None:
        cut = bisect_right(self._arr, self.now_s, self._head)
        del self._arr[cut:]

    def _draw_until(self, idx: int, t: float) -> None:
        """Open loop: draw arrivals until the list has index ``idx`` or passes time ``t``."""
        arr = self._arr
        while self._next_arrival < _INF and (len(arr) <= idx or arr[-1] <= t):
            gaps = self._rng.exponential(1.0 / self._rate, _CHUNK)
            times = self._next_arrival + np.concatenate(([0.0], np.cumsum(gaps[:-1])))
            arr.extend(times.tolist())
            self._next_arrival = float(times[-1] + gaps[-1])

    def _jitter(self) -> float:
        if not self._jit:
            cv = self.profile.jitter_cv
            if cv <= 0:
                self._jit = [1.0] * _CHUNK
            else:
                s2 = math.log1p(cv * cv)
                self._jit = self._rng.lognormal(-s2 / 2, math.sqrt(s2), _CHUNK).tolist()
        return self._jit.pop()

    # ---------------------------------------------------------------- event loop
    def _rescale(self, old_m: int, new_m: int, now: float) -> None:
        """Running batches change speed when the busy count goes from old_m to new_m."""
        lat = self._lat
        sb, sdone = self._sb, self._sdone
        for i, b in enumerate(sb):
            if b:
                row = lat[b - 1]
                sdone[i] = now + (sdone[i] - now) * row[new_m - 1] / row[old_m - 1]

    def _next_dispatch(self, now: float) -> tuple[float, int]:
        """(time, slot) of the next batch dispatch given known arrivals; (inf, -1) if none."""
        knobs = self._knobs
        n = knobs.instances
        sb = self._sb
        slot = -1
        for i in range(n):
            if not sb[i]:
                slot = i
                break
        if slot < 0:
            return _INF, -1
        arr, head = self._arr, self._head
        maxb = knobs.max_batch_size
        if self._next_arrival < _INF:
            self._draw_until(head + maxb, now)
        if head >= len(arr):
            return _INF, -1
        first = arr[head]
        if maxb == 1 or knobs.queue_delay_us == 0:
            return (first if first > now else now), slot
        t = first + knobs.queue_delay_us * 1e-6
        if head + maxb - 1 < len(arr):
            t = min(t, arr[head + maxb - 1])
        return (t if t > now else now), slot

    def _dispatch(self, slot: int, t: float) -> None:
        knobs = self._knobs
        head = self._head
        end = bisect_right(self._arr, t, head, min(len(self._arr), head + knobs.max_batch_size))
        b = end - head
        self._head = end
        m_old = self._busy
        m_new = m_old + 1
        if m_old == 0:
            self._busy_since = t
        elif m_new <= self._kmax:
            self._rescale(m_old, m_new, t)
        self._busy = m_new
        m_eff = m_new if m_new <= self._kmax else self._kmax
        service = self._lat[b - 1][m_eff - 1] * 1e-3 * self._jitter() * self._interference
        self._sb[slot] = b
        self._sdisp[slot] = t
        self._sstart[slot] = head
        self._sdone[slot] = t + service

    def _complete(self, slot: int, t: float) -> None:
        b = self._sb[slot]
        self._w_done.append(t)
        self._w_disp.append(self._sdisp[slot])
        self._w_start.append(self._sstart[slot])
        self._w_b.append(b)
        self._sb[slot] = 0
        self._sdone[slot] = _INF
        m_old = self._busy
        self._busy = m_old - 1
        if self._busy == 0:
            self._busy_time += t - self._busy_since
        elif m_old <= self._kmax:
            self._rescale(m_old, m_old - 1, t)
        if self._closed:
            missing = self._closed - self._outstanding()
            if missing > 0:
                self._arr.extend([t] * missing)

    def _switch_config(self, t: float) -> None:
        assert self._pending is not None
        self._knobs = self._pending
        self._pending, self._pending_at, self._reloading = None, _INF, False

    def advance_to(self, t_s: float) -> None:
        """Run all events up to virtual time ``t_s``."""
        if t_s < self.now_s:
            raise ValueError(f"advance_to: {t_s} is before now ({self.now_s})")
        now = self.now_s
        sdone = self._sdone
        while True:
            t_disp, slot = self._next_dispatch(now)
            t_done = min(sdone)
            t_cfg = self._pending_at
            t_next = min(t_disp, t_done, t_cfg)
            if t_next > t_s:
                break
            now = t_next
            if t_done == t_next:
                self._complete(sdone.index(t_done), now)
            elif t_cfg == t_next:
                self._switch_config(now)
            else:
                self._dispatch(slot, now)
        self.now_s = t_s
        if self._next_arrival < _INF:
            self._draw_until(self._head, t_s)

    # ---------------------------------------------------------------- observation
    @property
    def arrived_total(self) -> int:
        """Requests that have arrived since the server was created."""
        return self._dropped + bisect_right(self._arr, self.now_s, self._head)

    def pending_requests(self) -> int:
        """Requests arrived but not completed (queued + in flight)."""
        queued = bisect_right(self._arr, self.now_s, self._head) - self._head
        return queued + sum(self._sb)

    def collect(self) -> WindowSample:
        """Statistics of requests completed since the previous collect, and their latencies."""
        now = self.now_s
        window_s = max(now - self._win_start, 1e-9)
        done = np.asarray(self._w_done)
        disp = np.asarray(self._w_disp)
        start = np.asarray(self._w_start, dtype=np.int64)
        bs = np.asarray(self._w_b, dtype=np.int64)
        busy_time = self._busy_time + (now - self._busy_since if self._busy else 0.0)
        util = min(100.0, 100.0 * busy_time / window_s)
        n = int(bs.sum()) if bs.size else 0
        if n:
            arr = np.asarray(self._arr)
            offs = np.repeat(start - np.cumsum(bs) + bs, bs) + np.arange(n)
            t_arr = arr[offs]
            t_done = np.repeat(done, bs)
            t_disp = np.repeat(disp, bs)
            lat_ms = (t_done - t_arr) * 1e3
            q_ms = (t_disp - t_arr) * 1e3
            comp_ms = (done - disp) * 1e3
            p50, p95, p99 = np.percentile(lat_ms, [50.0, 95.0, 99.0])
            batch_stats: dict[int, BatchStat] = {}
            for b in np.unique(bs).tolist():
                sel = bs == b
                batch_stats[int(b)] = BatchStat(
                    count=int(sel.sum()), compute_ms_mean=float(comp_ms[sel].mean())
                )
            stats = WindowStats(
                window_s=window_s,
                completed=n,
                failed=0,
                throughput_rps=n / window_s,
                latency_mean_ms=float(lat_ms.mean()),
                latency_p50_ms=float(p50),
                latency_p95_ms=float(p95),
                latency_p99_ms=float(p99),
                queue_mean_ms=float(q_ms.mean()),
                compute_mean_ms=float(np.repeat(comp_ms, bs).mean()),
                pending_requests=self.pending_requests(),
                batch_stats=batch_stats,
            )
        else:
            lat_ms = np.empty(0)
            stats = WindowStats(
                window_s=window_s, pending_requests=self.pending_requests(), batch_stats={}
            )
        self._last_util = util
        self._reset_window(now)
        return WindowSample(stats=stats, latencies_ms=lat_ms)

    def collect_window(self) -> WindowStats:
        """``collect()`` without the raw latencies."""
        return self.collect().stats

    def _reset_window(self, now: float) -> None:
        self._win_start = now
        self._w_done, self._w_disp, self._w_start, self._w_b = [], [], [], []
        self._busy_time = 0.0
        if self._busy:
            self._busy_since = now
        # Compact: forget requests older than every in-flight batch and the queue head.
        low = self._head
        for i, b in enumerate(self._sb):
            if b and self._sstart[i] < low:
                low = self._sstart[i]
        if low > 0:
            del self._arr[:low]
            self._dropped += low
            self._head -= low
            for i, b in enumerate(self._sb):
                if b:
                    self._sstart[i] -= low

    def memory_used_mb(self) -> float | None:
        mem = self.profile.instance_memory_mb
        if mem is None:
            return None
        n = self._knobs.instances
        if self._pending is not None:
            n = n + self._pending.instances if self._reloading else max(n, self._pending.instances)
        total = self.profile.gpu_memory_mb
        return n * mem if total is None else min(total, n * mem)

    def gpu_telemetry(self) -> GpuTelemetry:
        """Utilization = share of the last window with at least one batch running (like NVML's
        "time a kernel was executing"); memory = instances x instance_memory_mb (both configs
        while a reload is under way, capped at the GPU's memory)."""
        return GpuTelemetry(
            utilization_pct=self._last_util,
            memory_used_mb=self.memory_used_mb(),
            memory_total_mb=self.profile.gpu_memory_mb,
            power_w=None,
        )
