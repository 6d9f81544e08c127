"""The controller's Prometheus endpoint exposes reports, decisions and knobs."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller

from .conftest import wait_for

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_endpoint(controller_config: ControllerConfig, start_agent) -> None:
    port = _free_port()
    c = Controller(ControllerConfig(**{**controller_config.__dict__, "metrics_port": port}))
    await c.start()
    try:
        await start_agent(c.address, "a0", {"inception": ("imagenet/Inc-V1", 40.0)})

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()

        async def reported() -> bool:
            text = await asyncio.to_thread(scrape)
            return "dnnscaler_reports_total" in text and 'knob="max_batch_size"' in text

        await wait_for(reported, timeout_s=20)
        text = await asyncio.to_thread(scrape)
        line = next(x for x in text.splitlines() if x.startswith("dnnscaler_reports_total"))
        assert float(line.split()[-1]) >= 1
        assert "dnnscaler_report_decision_seconds_bucket" in text
    finally:
        await c.stop()
