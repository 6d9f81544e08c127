"""TorchServe's Prometheus counters, per model, summed over versions.

``ts_inference_requests_total``, ``ts_inference_latency_microseconds`` and
``ts_queue_latency_microseconds`` are cumulative and kept by the frontend across version
swaps (labelled with the version the request named, ``default`` for most). Differencing
two readings gives a window's count and mean latencies; a counter that went back (a
server restart) starts over from zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAMPLE = re.compile(r"^(?P<name>ts_[a-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_FIELDS = {
    "ts_inference_requests_total": "requests",
    "ts_inference_latency_microseconds": "latency_us",
    "ts_queue_latency_microseconds": "queue_us",
}


@dataclass(frozen=True)
class Counters:
    requests: float = 0.0
    latency_us: float = 0.0
    queue_us: float = 0.0

    def minus(self, prev: Counters | None) -> Counters:
        """The window's share; all of it when a counter went back (the server restarted)."""
        if prev is None:
            return self
        if self.requests < prev.requests or self.latency_us < prev.latency_us:
            return self
        return Counters(
            self.requests - prev.requests,
            self.latency_us - prev.latency_us,
            max(0.0, self.queue_us - prev.queue_us),
        )

    def mean_ms(self, total_us: float) -> float | None:
        return total_us / self.requests / 1000.0 if self.requests > 0 else None


def parse_counters(text: str) -> dict[str, Counters]:
    """Per model name, the counters summed over its versions."""
    sums: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group("name") not in _FIELDS:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        model = labels.get("model_name")
        if not model:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        field = _FIELDS[m.group("name")]
        acc = sums.setdefault(model, {})
        acc[field] = acc.get(field, 0.0) + value
    return {name: Counters(**vals) for name, vals in sums.items()}
