"""Prometheus metrics of the controller (served on ``--metrics-port`` when set).

Each controller owns its own registry so that several controllers in one process (tests)
do not collide.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# The ``knob`` label's values of ``dnnscaler_model_knob``, one series each per agent and model.
KNOB_NAMES = ("max_batch_size", "instances", "queue_delay_us")


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reports = Counter(
            "dnnscaler_reports", "Agent reports processed", registry=self.registry
        )
        self.bad_messages = Counter(
            "dnnscaler_bad_agent_messages",
            "Agent messages logged and skipped",
            registry=self.registry,
        )
        self.report_problems = Counter(
            "dnnscaler_agent_report_problems",
            "Values from agents refused (their model's window unused) or clamped, by field",
            ["field", "outcome"],
            registry=self.registry,
        )
        self.reports_superseded = Counter(
            "dnnscaler_reports_superseded",
            "Reports replaced by their agent's newer one before a decision (overload)",
            registry=self.registry,
        )
        self.report_queue = Gauge(
            "dnnscaler_report_queue",
            "Reports waiting for a decision (at most one per agent)",
            registry=self.registry,
        )
        self.knob_updates = Counter(
            "dnnscaler_knob_updates", "Knob updates sent", ["model"], registry=self.registry
        )
        self.decision_seconds = Histogram(
            "dnnscaler_report_decision_seconds",
            "Time from a report's arrival to the decisions for all its models",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        # From the agent's send (its ``sent_at_unix_s``, wall clock) to the decisions made:
        # the queueing a loaded controller adds shows here, not in decision_seconds.
        self.report_age_seconds = Histogram(
            "dnnscaler_report_age_at_decision_seconds",
            "Time from the agent's send of a report to the decisions for all its models",
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.02,
                0.035,
                0.05,
                0.075,
                0.1,
                0.15,
                0.25,
                0.5,
                1.0,
                2.5,
                5.0,
                10.0,
                30.0,
            ),
            registry=self.registry,
        )
        self.agents = Gauge("dnnscaler_agents", "Agents known", ["state"], registry=self.registry)
        self.knobs = Gauge(
            "dnnscaler_model_knob",
            "Knobs in force",
            ["agent", "model", "knob"],
            registry=self.registry,
        )
        self.latency_ms = Gauge(
            "dnnscaler_model_latency_ms",
            "Latest window's latency at the SLO percentile",
            ["agent", "model"],
            registry=self.registry,
        )
        self.throughput = Gauge(
            "dnnscaler_model_throughput_rps",
            "Latest window's throughput",
            ["agent", "model"],
            registry=self.registry,
        )

    def knob_gauges(self, agent: str, model: str) -> tuple[Gauge, Gauge, Gauge]:
        """One model's knob series, in ``KNOB_NAMES`` order."""
        batch, instances, delay = (
            self.knobs.labels(agent=agent, model=model, knob=k) for k in KNOB_NAMES
        )
        return batch, instances, delay

    def forget(self, agent: str, models: list[str]) -> None:
        """Remove a forgotten agent's per-model series (absent ones are skipped)."""
        for model in models:
            for knob in KNOB_NAMES:
                with contextlib.suppress(KeyError):
                    self.knobs.remove(agent, model, knob)
            for gauge in (self.latency_ms, self.throughput):
                with contextlib.suppress(KeyError):
                    gauge.remove(agent, model)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
