"""Prometheus metrics of an agent (served on ``metrics_port`` when set): what it sees and
does on its GPU, readable where the controller is not (a partition, a controller down).

Each agent owns its registry, so that several agents in one process (tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from dnnscaler.core.types import Knobs, WindowStats


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected = Gauge(
            "dnnscaler_agent_connected",
            "1 while the stream to the controller is established",
            registry=self.registry,
        )
        self.sessions = Counter(
            "dnnscaler_agent_sessions",
            "Streams established with a controller",
            registry=self.registry,
        )
        self.backend_available = Gauge(
            "dnnscaler_agent_backend_available",
            "1 while the inference server answers",
            registry=self.registry,
        )
        self.knobs = Gauge(
            "dnnscaler_agent_knob",
            "Knobs in force on the inference server",
            ["model", "knob"],
            registry=self.registry,
        )
        self.throughput = Gauge(
            "dnnscaler_agent_window_throughput_rps",
            "Latest window's throughput",
            ["model"],
            registry=self.registry,
        )
        self.latency = Gauge(
            "dnnscaler_agent_window_latency_ms",
            "Latest window's server-side latency, by percentile",
            ["model", "percentile"],
            registry=self.registry,
        )
        self.applies = Counter(
            "dnnscaler_agent_applies",
            "Knob updates by outcome: started (a background apply), ok (in force), failed,"
            " held_back (refused knobs within their backoff: the server was not asked);"
            " reconciled / reconcile_failed: knobs set again after a server outage",
            ["model", "outcome"],
            registry=self.registry,
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)

    def window(self, model: str, knobs: Knobs, w: WindowStats) -> None:
        self.set_knobs(model, knobs)
        self.throughput.labels(model).set(w.throughput_rps)
        for name, value in (
            ("50", w.latency_p50_ms),
            ("95", w.latency_p95_ms),
            ("99", w.latency_p99_ms),
        ):
            if value is not None:
                self.latency.labels(model, name).set(value)

    def set_knobs(self, model: str, knobs: Knobs) -> None:
        self.knobs.labels(model, "max_batch_size").set(knobs.max_batch_size)
        self.knobs.labels(model, "instances").set(knobs.instances)
        self.knobs.labels(model, "queue_delay_us").set(knobs.queue_delay_us)
