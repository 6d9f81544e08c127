"""Per-request server latencies from Triton's request trace files (tail latency source).

Triton (trace level TIMESTAMPS, rate R, ``log_frequency`` N) writes every N traced (1 in R)
requests to ``<trace_file>.<index>`` as a JSON list of entries ``{"id", "model_name"}`` and
``{"id", "timestamps": [{"name", "ns"}]}``. A request's latency is taken from the moment
the gRPC frontend finished reading it (``GRPC_WAITREAD_END``) to the moment its response
was sent (``GRPC_SEND_END``) — the span a client sees minus the network and client
library; ``REQUEST_START``→``REQUEST_END`` is the fallback (HTTP, in-process).

The reader consumes (deletes) the files it has parsed so a long run does not fill the
disk. A file that does not parse yet is retried (Triton may still be writing it) and
skipped once a later file parses.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dnnscaler.core.logging import get_logger

log = get_logger(__name__)

_START_KEYS = ("GRPC_WAITREAD_END", "HTTP_RECV_END", "REQUEST_START")
_END_KEYS = ("GRPC_SEND_END", "HTTP_SEND_END", "REQUEST_END")


@dataclass(frozen=True)
class TracedRequest:
    model: str
    latency_ms: float
    end_ns: int


@dataclass
class _Partial:
    model: str | None = None
    stamps: dict[str, int] = field(default_factory=dict)


def requests_from_entries(entries: list[dict[str, Any]]) -> tuple[list[TracedRequest], int]:
    """Complete requests in one trace file's entries, and how many traces were incomplete."""
    partial: dict[int, _Partial] = defaultdict(_Partial)
    for entry in entries:
        tid = int(entry.get("id", -1))
        p = partial[tid]
        if "model_name" in entry:
            p.model = str(entry["model_name"])
        for stamp in entry.get("timestamps", ()):
            p.stamps[str(stamp["name"])] = int(stamp["ns"])
    done: list[TracedRequest] = []
    incomplete = 0
    for p in partial.values():
        start = next((p.stamps[k] for k in _START_KEYS if k in p.stamps), None)
        end = next((p.stamps[k] for k in _END_KEYS if k in p.stamps), None)
        if p.model is None or start is None or end is None or end < start:
            incomplete += 1
            continue
        done.append(TracedRequest(p.model, (end - start) / 1e6, end))
    return done, incomplete


def percentiles_ms(latencies_ms: list[float]) -> tuple[float, float, float, float] | None:
    """(p50, p95, p99, mean) with numpy's default (linear) interpolation; None if empty.

    The load generator uses the same definition so the two sides compare like for like.
    """
    if not latencies_ms:
        return None
    arr = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return float(p50), float(p95), float(p99), float(arr.mean())


class TraceReader:
    """Reads and consumes ``<prefix>.<index>`` trace files in index order."""

    def __init__(self, prefix: str | Path, delete: bool = True) -> None:
        self.prefix = Path(prefix)
        self.delete = delete
        self._next_index = 0
        self._failed_once: set[int] = set()
        self._pattern = re.compile(re.escape(self.prefix.name) + r"\.(\d+)$")

    def _indexed_files(self) -> list[tuple[int, Path]]:
        try:
            names = list(self.prefix.parent.iterdir())
        except OSError:
            return []
        found = []
        for path in names:
            m = self._pattern.match(path.name)
            if m:
                found.append((int(m.group(1)), path))
        # Consumed files are deleted, so a lower index than expected means the server
        # restarted and numbers its files from 0 again.
        if self.delete and any(index < self._next_index for index, _ in found):
            log.info("trace.index_restart", prefix=str(self.prefix))
            self._next_index = 0
            self._failed_once.clear()
        return sorted(f for f in found if f[0] >= self._next_index)

    def discard_existing(self) -> None:
        """Drop files written before we started reading (their requests are not ours)."""
        for index, path in self._indexed_files():
            self._next_index = index + 1
            if self.delete:
                with contextlib.suppress(OSError):
                    path.unlink()

    def poll(self) -> list[TracedRequest]:
        """All complete requests in the files written since the previous poll."""
        out: list[TracedRequest] = []
        files = self._indexed_files()
        for pos, (index, path) in enumerate(files):
            try:
                entries = json.loads(path.read_text())
            except (OSError, ValueError):
                later = pos + 1 < len(files)
                if later and index in self._failed_once:
                    log.warning("trace.file_skipped", file=str(path))
                    self._next_index = index + 1
                    continue
                self._failed_once.add(index)
                break  # probably still being written: retry next poll
            done, _ = requests_from_entries(entries if isinstance(entries, list) else [])
            out.extend(done)
            self._next_index = index + 1
            self._failed_once.discard(index)
            if self.delete:
                with contextlib.suppress(OSError):
                    path.unlink()
        return out


# Sampling: Triton 2.51 crashes or hangs under tracing at a rate that grows with the number
# of traced requests (docs/triton.md), and tracing costs server CPU at saturation; a tail
# needs a few hundred samples per window, not every request.
MAX_TRACE_RATE = 64  # trace at least 1 request in 64
FLUSHES_PER_S = 8  # trace files per second, so each window has fresh samples
MAX_LOG_FREQUENCY = 200


def sampling_settings(
    total_rps: float,
    budget_rps: float | None,
    rate: int | None,
    log_frequency: int | None,
    peak_rps: float = 0.0,
) -> dict[str, int]:
    """The trace settings to change (``trace_rate``, ``log_frequency``) so that about
    ``budget_rps`` requests a second are traced and flushed ~8 times a second; ``{}`` when
    nothing needs to change. ``rate``/``log_frequency`` are the values in force (``None``:
    unknown, left alone); ``budget_rps`` None traces at the rate in force.

    The rate follows the highest of ``total_rps`` and ``peak_rps`` (the recent peak): it
    goes up as soon as the load needs it (fewer traced requests protect the server), and
    down only when half of it would do for the recent peak too, so that one quiet window
    (a reload's) does not set every request traced under the full load that follows.
    """
    if total_rps <= 0:
        return {}
    out: dict[str, int] = {}
    in_force = rate if rate is not None and rate >= 1 else 1
    if budget_rps is not None and budget_rps > 0 and rate is not None:
        load = max(total_rps, peak_rps)
        want = int(min(MAX_TRACE_RATE, max(1, -(-load // budget_rps))))
        if want > in_force or 2 * want <= in_force:
            out["trace_rate"] = want
            in_force = want
    if log_frequency is not None:
        freq = int(min(MAX_LOG_FREQUENCY, max(1, total_rps / in_force / FLUSHES_PER_S)))
        if not (log_frequency and 0.5 <= freq / log_frequency <= 2):
            out["log_frequency"] = freq
    return out
