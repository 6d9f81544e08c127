"""The load generator against a fake in-process client (no server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dnnscaler.loadgen import LoadGen
from dnnscaler.loadgen.generator import check_loopback
from dnnscaler.loadgen.stats import summarize


class FakeClient:
    """Answers after ``delay_s``; fails every ``fail_every``-th request."""

    def __init__(
        self, delay_s: float = 0.002, fail_every: int = 0, fail_with: str = "boom"
    ) -> None:
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.fail_with = fail_with
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def get_model_metadata(self, model: str, as_json: bool = False) -> dict[str, Any]:
        return {
            "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "4"]}],
            "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": ["-1", "4"]}],
        }

    async def infer(self, model: str, inputs: Any, **kwargs: Any) -> None:
        self.calls += 1
        n = self.calls
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        if self.fail_every and n % self.fail_every == 0:
            raise RuntimeError(self.fail_with)


def test_summarize() -> None:
    w = summarize(
        0.0,
        2.0,
        [0.001 * i for i in range(1, 101)],
        sent=100,
        errors=1,
        dropped=0,
        offered_rps=50.0,
    )
    assert w.completed == 100
    assert w.throughput_rps == 50.0
    assert w.latency_p50_ms == pytest.approx(50.5)
    assert w.latency_p99_ms == pytest.approx(99.01)
    assert w.latency_max_ms == pytest.approx(100.0)
    empty = summarize(0.0, 1.0, [], sent=0, errors=0, dropped=0, offered_rps=0.0)
    assert empty.latency_p99_ms is None
    assert empty.to_dict()["duration_s"] == 1.0


@pytest.mark.parametrize("url", ["127.0.0.1:8001", "localhost:1", "[::1]:80"])
def test_loopback_accepted(url: str) -> None:
    check_loopback(url)


def test_remote_refused() -> None:
    with pytest.raises(ValueError, match="loopback"):
        check_loopback("10.1.2.3:8001")
    with pytest.raises(ValueError, match="exactly one"):
        LoadGen("127.0.0.1:1", "m")


async def test_open_loop_rate_and_set_rate() -> None:
    fake = FakeClient()
    async with LoadGen("127.0.0.1:1", "m", rate_rps=200, client=fake, seed=1) as gen:
        w1 = await gen.run_for(1.0)
        gen.set_rate(0)
        await asyncio.sleep(0.05)
        w0 = await gen.run_for(0.3)
        gen.set_rate(50)
        w2 = await gen.run_for(1.0)
    assert 140 <= w1.completed <= 260  # Poisson(200) over 1 s
    assert w1.offered_rps == pytest.approx(200, rel=0.05)
    assert w0.sent == 0
    assert 25 <= w2.completed <= 80
    assert w1.errors == 0
    assert w1.latency_p50_ms is not None and w1.latency_p50_ms >= 2.0


async def test_closed_loop_keeps_concurrency_and_counts_errors() -> None:
    fake = FakeClient(delay_s=0.005, fail_every=10)
    async with LoadGen("127.0.0.1:1", "m", concurrency=3, client=fake) as gen:
        await asyncio.sleep(0.3)
    snap = gen.snapshot()
    assert fake.max_in_flight == 3
    assert snap.errors >= 1
    assert snap.errors + snap.completed == fake.calls
    assert gen.last_error.endswith("boom")
    # Each failure is kept with its time and message, in order, for a test to print.
    assert 1 <= len(gen.errors) == min(snap.errors, 50)
    first = gen.errors[0]
    assert first.message.endswith("boom") and 0 <= first.sent_s <= first.failed_s
    assert [e.sent_s for e in gen.errors] == sorted(e.sent_s for e in gen.errors)
    assert "boom" in gen.error_report() and gen.error_report().startswith("t=")


async def test_bounded_by_request_count() -> None:
    fake = FakeClient(delay_s=0.0)
    async with LoadGen("127.0.0.1:1", "m", rate_rps=1000, client=fake, max_requests=25) as gen:
        for _ in range(100):
            if gen.done:
                break
            await asyncio.sleep(0.02)
        assert gen.done
    assert fake.calls == 25


async def test_in_flight_cap_drops_instead_of_queueing() -> None:
    fake = FakeClient(delay_s=0.5)
    async with LoadGen("127.0.0.1:1", "m", rate_rps=500, client=fake, max_in_flight=5) as gen:
        await asyncio.sleep(0.3)
        w = gen.window()
        await gen.stop(drain_s=0.0)
    assert fake.max_in_flight <= 5
    assert w.dropped > 0


TRITON_DEFECT = (
    "[StatusCode.INVALID_ARGUMENT] [request id: <id_unknown>] input 'INPUT0' does not exist"
    " in request"
)


@pytest.mark.parametrize(
    ("fail_every", "fail_with", "defect"),
    [
        (0, "boom", False),  # no failure: nothing to explain
        (10, "boom", False),  # a failure of another kind
        (10, TRITON_DEFECT, True),  # Triton denied the input the request carried
        (10, TRITON_DEFECT.replace("INPUT0", "INPUT9"), False),  # an input it did not send
    ],
)
async def test_upstream_defect_only_when_every_failure_is_one(
    fail_every: int, fail_with: str, defect: bool
) -> None:
    fake = FakeClient(delay_s=0.002, fail_every=fail_every, fail_with=fail_with)
    async with LoadGen("127.0.0.1:1", "m", concurrency=2, client=fake) as gen:
        await asyncio.sleep(0.2)
    found = gen.upstream_defect()
    assert (found is not None) == defect, (found, gen.error_report())
    if defect:
        assert found is not None and "INPUT0" in found and "Triton 2.51" in found
