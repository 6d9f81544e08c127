"""TritonBackend's reconcile logic against an in-memory fake of the aio client."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from tritonclient.utils import InferenceServerException

from dnnscaler.agents.backend import BackendUnavailable, KnobRejected
from dnnscaler.agents.backends.triton import TritonBackend
from dnnscaler.core.types import Knobs

BASE: dict[str, Any] = {
    "name": "m",
    "max_batch_size": 8,
    "dynamic_batching": {},
    "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    "parameters": {
        "dnnscaler.max_batch_size": {"string_value": "16"},
        "dnnscaler.max_instances": {"string_value": "4"},
    },
}


def _stat(success: int) -> dict[str, Any]:
    d = {"count": str(success), "ns": str(success * 1_000_000)} if success else {}
    return {
        "model_stats": [
            {
                "name": "m",
                "execution_count": str(success),
                "inference_stats": {"success": d, "queue": d, "compute_infer": d},
                "batch_stats": [{"batch_size": "1", "compute_infer": d}],
            }
        ]
    }


class FakeClient:
    def __init__(self) -> None:
        self.config = copy.deepcopy(BASE)
        self.state = "READY"
        self.down = False
        self.fail_loads = False
        self.block_decrease = asyncio.Event()
        self.success = 0
        self.loads: list[dict[str, Any]] = []

    def _check(self) -> None:
        if self.down:
            raise InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")

    async def is_server_live(self, **kw: Any) -> bool:
        self._check()
        return True

    async def is_server_ready(self, **kw: Any) -> bool:
        self._check()
        return True

    async def get_model_repository_index(self, **kw: Any) -> dict[str, Any]:
        self._check()
        return {"models": [{"name": "m", "version": "1", "state": self.state}]}

    async def get_model_config(self, name: str, **kw: Any) -> dict[str, Any]:
        self._check()
        return {"config": copy.deepcopy(self.config)}

    async def get_inference_statistics(self, name: str, **kw: Any) -> dict[str, Any]:
        self._check()
        return _stat(self.success)

    async def load_model(self, name: str, config: str | None = None, **kw: Any) -> None:
        self._check()
        assert config is not None
        new = json.loads(config)
        self.loads.append(new)
        if self.fail_loads:
            raise InferenceServerException("failed to poll from model repository")
        old_n = sum(g["count"] for g in self.config["instance_group"])
        new_n = sum(g["count"] for g in new["instance_group"])
        if new_n < old_n and new["max_batch_size"] == self.config["max_batch_size"]:
            self.config = new  # Triton shows the new config while it drains
            await self.block_decrease.wait()
        self.config = new

    async def close(self) -> None:
        pass


@pytest.fixture
async def pair() -> tuple[TritonBackend, FakeClient]:
    fake = FakeClient()
    # A blocked change becomes background work after blocking_wait_s: 1 s, not the 60 s
    # default, or the decrease test waits a minute for it.
    backend = TritonBackend("127.0.0.1:1", trace_file=None, blocking_wait_s=1.0)
    backend._client = fake
    await backend.start()
    return backend, fake


async def test_rejects_before_any_load(pair: tuple[TritonBackend, FakeClient]) -> None:
    backend, fake = pair
    with pytest.raises(KnobRejected, match="max_batch_size"):
        await backend.apply("m", Knobs(max_batch_size=32, instances=1))
    with pytest.raises(KnobRejected, match="not served"):
        await backend.apply("other", Knobs())
    assert fake.loads == []


async def test_reload_is_awaited_and_read_back(pair: tuple[TritonBackend, FakeClient]) -> None:
    backend, fake = pair
    out = await backend.apply("m", Knobs(max_batch_size=4, instances=2, queue_delay_us=100))
    assert out.ok and not out.in_progress
    assert out.knobs_in_force == Knobs(4, 2, 100)
    assert fake.loads[-1]["parameters"] == BASE["parameters"]  # the whole config is sent
    again = await backend.apply("m", Knobs(4, 2, 100))
    assert again.ok and len(fake.loads) == 1


async def test_decrease_runs_in_background(pair: tuple[TritonBackend, FakeClient]) -> None:
    backend, fake = pair
    out = await backend.apply("m", Knobs(max_batch_size=8, instances=1))
    assert out.ok and out.in_progress
    same = await backend.apply("m", Knobs(max_batch_size=8, instances=1))
    assert same.in_progress and same.ok
    other = await backend.apply("m", Knobs(max_batch_size=8, instances=3))
    assert other.in_progress and not other.ok and "in progress" in other.error
    info = (await backend.list_models())[0]
    assert "in progress" in info.message
    fake.block_decrease.set()
    for _ in range(20):  # the load task ends, its statistics watcher with it
        await asyncio.sleep(0)
    done = await backend.apply("m", Knobs(max_batch_size=8, instances=1))
    assert done.ok and not done.in_progress
    assert done.knobs_in_force == Knobs(8, 1, 0)


async def test_failed_load_reports_and_keeps_old(pair: tuple[TritonBackend, FakeClient]) -> None:
    backend, fake = pair
    fake.fail_loads = True
    out = await backend.apply("m", Knobs(max_batch_size=2, instances=2))
    assert not out.ok and "load failed" in out.error
    assert out.knobs_in_force == Knobs(8, 2, 0)
    info = (await backend.list_models())[0]
    assert info.available and "last apply failed" in info.message


async def test_stats_windows_and_reset(pair: tuple[TritonBackend, FakeClient]) -> None:
    backend, fake = pair
    fake.success = 10
    first = (await backend.observe())[0].window
    fake.success = 25
    second = (await backend.observe())[0].window
    fake.success = 4  # full reload reset the counters
    third = (await backend.observe())[0].window
    assert (first.completed, second.completed, third.completed) == (10, 15, 4)
    assert second.latency_mean_ms == pytest.approx(1.0)
    assert second.latency_p99_ms is None  # no trace source configured
    assert second.batch_stats[1].count == 15


async def test_first_window_excludes_requests_served_before_start() -> None:
    # An agent restarted against a long-running server: the 5,000 requests it served before
    # are not this window's (they read as thousands of requests a second that never were).
    fake = FakeClient()
    fake.success = 5000
    backend = TritonBackend("127.0.0.1:1", trace_file=None)
    backend._client = fake
    await backend.start()
    fake.success = 5012
    first = (await backend.observe())[0].window
    assert first.completed == 12
    assert first.throughput_rps == pytest.approx(12 / first.window_s)


async def test_unloaded_model_reported(pair: tuple[TritonBackend, FakeClient]) -> None:
    backend, fake = pair
    fake.state = "UNAVAILABLE"
    info = (await backend.list_models())[0]
    assert not info.available and "UNAVAILABLE" in info.message
    out = await backend.apply("m", Knobs(max_batch_size=4, instances=2))
    assert not out.ok
    assert fake.loads == []


async def test_down_raises_unavailable(pair: tuple[TritonBackend, FakeClient]) -> None:
    backend, fake = pair
    fake.down = True
    with pytest.raises(BackendUnavailable):
        await backend.observe()
    with pytest.raises(BackendUnavailable):
        await backend.apply("m", Knobs(max_batch_size=4, instances=2))


async def test_a_reload_window_counts_what_the_old_instances_served(
    pair: tuple[TritonBackend, FakeClient],
) -> None:
    # Triton resets a model's counters on a full reload. The old instances keep serving
    # while the new ones load; the backend reads the counters meanwhile, so the window after
    # the reload counts them (it read ~25 % low without: bench reloads, 12-06).
    backend, fake = pair
    fake.success = 10
    await backend.observe()
    real_load = fake.load_model

    async def slow_load(name: str, config: str | None = None, **kw: Any) -> None:
        fake.success = 30  # served by the old instances during the load
        await asyncio.sleep(0.35)
        await real_load(name, config=config, **kw)
        fake.success = 0  # the reset

    fake.load_model = slow_load  # type: ignore[method-assign]
    out = await backend.apply("m", Knobs(max_batch_size=4, instances=2))
    assert out.ok
    fake.success = 5  # the new instances' first requests
    window = (await backend.observe())[0].window
    assert window.completed == 20 + 5
    fake.success = 9
    assert (await backend.observe())[0].window.completed == 4


async def test_a_reset_not_of_ours_counts_the_new_counters_alone(
    pair: tuple[TritonBackend, FakeClient],
) -> None:
    # A reload by someone else (or a restart): nothing read before it, nothing added.
    backend, fake = pair
    fake.success = 10
    await backend.observe()
    fake.success = 40
    await backend.observe()
    fake.success = 3
    assert (await backend.observe())[0].window.completed == 3
