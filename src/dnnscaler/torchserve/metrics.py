"""TorchServe's Prometheus counters, per model, summed over versions.

``ts_inference_requests_total``, ``ts_inference_latency_microseconds`` and
``ts_queue_latency_microseconds`` are cumulative and kept by the frontend across version
swaps (labelled with the version the request named, ``default`` for most). The demo
handler adds ``DnnscalerBatches`` and ``DnnscalerBatchComputeMs`` per batch size (declared
in the server's metrics config, ``launcher.BATCH_METRICS``): the batch statistics the
policy's latency model needs, which TorchServe does not keep itself. Differencing two
readings gives a window's counts and means; a counter that went back (a server restart)
starts over from zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dnnscaler.core.types import BatchStat

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_]+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_FIELDS = {
    "ts_inference_requests_total": "requests",
    "ts_inference_latency_microseconds": "latency_us",
    "ts_queue_latency_microseconds": "queue_us",
}
_BATCH = {"DnnscalerBatches": 0, "DnnscalerBatchComputeMs": 1}


@dataclass(frozen=True)
class Counters:
    requests: float = 0.0
    latency_us: float = 0.0
    queue_us: float = 0.0
    # batch size -> (batches, their total compute ms)
    batches: Mapping[int, tuple[float, float]] = field(default_factory=dict)

    def minus(self, prev: Counters | None) -> Counters:
        """The window's share; all of it when a counter went back (the server restarted)."""
        if prev is None:
            return self
        if self.requests < prev.requests or self.latency_us < prev.latency_us:
            return self
        batches = {}
        for size, (count, ms) in self.batches.items():
            p_count, p_ms = prev.batches.get(size, (0.0, 0.0))
            if count < p_count:
                return self
            if count > p_count:
                batches[size] = (count - p_count, max(0.0, ms - p_ms))
        return Counters(
            self.requests - prev.requests,
            self.latency_us - prev.latency_us,
            max(0.0, self.queue_us - prev.queue_us),
            batches,
        )

    def mean_ms(self, total_us: float) -> float | None:
        return total_us / self.requests / 1000.0 if self.requests > 0 else None

    def batch_stats(self) -> dict[int, BatchStat]:
        return {
            size: BatchStat(int(count), ms / count)
            for size, (count, ms) in sorted(self.batches.items())
            if count > 0
        }

    def compute_mean_ms(self) -> float | None:
        """Mean compute time per request (each request counts its batch's time, as in
        Triton's statistics); ``None`` without batch statistics."""
        requests = sum(size * count for size, (count, _) in self.batches.items())
        work = sum(size * ms for size, (_, ms) in self.batches.items())
        return work / requests if requests > 0 else None


def parse_counters(text: str) -> dict[str, Counters]:
    """Per model name, the counters summed over its versions."""
    sums: dict[str, dict[str, float]] = {}
    batches: dict[str, dict[int, list[float]]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name = m.group("name")
        if name not in _FIELDS and name not in _BATCH:
            continue
        labels = dict(_LABEL.findall(m.group("labels")))
        model = labels.get("model_name") or labels.get("ModelName")
        if not model:
            continue
        try:
            value = float(m.group("value"))
        except ValueError:
            continue
        if name in _BATCH:
            try:
                size = int(labels.get("BatchSize", ""))
            except ValueError:
                continue
            slot = batches.setdefault(model, {}).setdefault(size, [0.0, 0.0])
            slot[_BATCH[name]] += value
            continue
        acc = sums.setdefault(model, {})
        acc[_FIELDS[name]] = acc.get(_FIELDS[name], 0.0) + value
    out = {}
    for model in set(sums) | set(batches):
        per_size = {size: (v[0], v[1]) for size, v in batches.get(model, {}).items()}
        out[model] = Counters(**sums.get(model, {}), batches=per_size)
    return out
