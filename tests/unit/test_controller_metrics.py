"""A forgotten agent's per-model series leave the controller's metrics (ForgetAgent)."""

from __future__ import annotations

from prometheus_client import generate_latest

from dnnscaler.controller.metrics import ControllerMetrics


def _text(m: ControllerMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_forget_removes_the_agents_series_and_keeps_the_others() -> None:
    m = ControllerMetrics()
    for agent in ("gone", "kept"):
        for knob in ("max_batch_size", "instances", "queue_delay_us"):
            m.knobs.labels(agent=agent, model="resnet", knob=knob).set(2)
        m.latency_ms.labels(agent=agent, model="resnet").set(12.5)
        m.throughput.labels(agent=agent, model="resnet").set(300)
    m.forget("gone", ["resnet", "never-exported"])  # an absent series is skipped
    text = _text(m)
    assert 'agent="gone"' not in text
    assert text.count('agent="kept"') == 5
