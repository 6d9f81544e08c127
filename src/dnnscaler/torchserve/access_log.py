"""TorchServe's access log as a per-request latency source (the agent's tail latency).

TorchServe counts latency only as cumulative sums (``ts_inference_latency_microseconds``):
a mean per window, no tail. Its frontend writes one access-log line per request when it
sends the response::

    2026-12-06T15:46:33,576 - /127.0.0.1:52188 "POST /predictions/wide_mlp HTTP/1.1" 200 13

the completion time (local time, ms), the request line, the status and the time from the
frontend taking the request to sending its response, in whole milliseconds. That span is
the server-side latency the SLO bounds (like Triton's traced span), for every request (no
sampling), written by the server itself. Its 1 ms resolution is the price: a p99 read
from it is within 1 ms of the true one. The reader follows the file across log4j's size
rotation (a new file: read it from its start).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3}) - \S+ "
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<ms>\d+)\s*$'
)
_PREDICT = re.compile(r"^/(?:predictions|v2/models)/(?P<model>[^/?:]+)(?:/(?P<version>[^/?]+))?")


@dataclass(frozen=True)
class AccessRecord:
    """One inference request as the frontend logged it."""

    end_s: float  # completion, seconds since the epoch
    model: str
    version: str | None
    status: int
    latency_ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def parse_line(line: str) -> AccessRecord | None:
    """The record of an inference request's line; ``None`` for any other line."""
    m = _LINE.match(line)
    if m is None or m.group("method") != "POST":
        return None
    p = _PREDICT.match(m.group("path"))
    if p is None:
        return None
    version = p.group("version")
    if version in ("infer", "ready"):
        version = None
    try:
        end = datetime.datetime.strptime(m.group("ts"), "%Y-%m-%dT%H:%M:%S,%f").timestamp()
    except ValueError:
        return None
    return AccessRecord(
        end, p.group("model"), version, int(m.group("status")), float(m.group("ms"))
    )


class AccessLogReader:
    """Reads the lines appended since the last ``poll`` (the first poll skips what was
    there before ``start``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._inode: int | None = None
        self._offset = 0
        self._partial = ""

    def start(self) -> None:
        """Begin at the current end of the file (earlier requests are not this run's)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._inode, self._offset = None, 0
            return
        self._inode, self._offset = st.st_ino, st.st_size

    def poll(self) -> list[AccessRecord]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if st.st_ino != self._inode or st.st_size < self._offset:  # rotated
            self._inode, self._offset, self._partial = st.st_ino, 0, ""
        if st.st_size == self._offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(st.st_size - self._offset)
        self._offset += len(data)
        text = self._partial + data.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()  # an incomplete last line waits for the next poll
        out = []
        for line in lines:
            rec = parse_line(line)
            if rec is not None:
                out.append(rec)
        return out
