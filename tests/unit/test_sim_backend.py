"""SimBackend implements the agent's Backend protocol over simulated servers."""

from __future__ import annotations

import pytest

from dnnscaler.agents.backend import Backend, KnobRejected
from dnnscaler.agents.backends.sim import SimBackend, SimModelSpec
from dnnscaler.core.types import Knobs
from dnnscaler.sim.profile import shipped_profiles


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> SimBackend:
    ps = shipped_profiles()
    return SimBackend(
        {
            "mob": SimModelSpec(ps["imagenet/Mob-V1-025"], Knobs(), rate_rps=80.0),
            "mem": SimModelSpec(ps["synthetic/memory-bound"], Knobs(1, 1, 0), rate_rps=20.0),
        },
        seed=1,
        clock=clock,
    )


async def test_observe_follows_the_clock_and_rate(backend: SimBackend, clock: FakeClock) -> None:
    b: Backend = backend
    await b.start()
    clock.t += 5.0
    wins = {w.info.name: w for w in await b.observe()}
    assert set(wins) == {"mob", "mem"}
    assert wins["mob"].window.window_s == pytest.approx(5.0)
    assert wins["mob"].window.throughput_rps == pytest.approx(80.0, rel=0.2)
    backend.set_rate("mob", 0.0)
    clock.t += 5.0
    await b.observe()
    clock.t += 5.0
    assert {w.info.name: w for w in await b.observe()}["mob"].window.completed == 0


async def test_apply_validates_then_reads_back(backend: SimBackend, clock: FakeClock) -> None:
    await backend.start()
    with pytest.raises(KnobRejected, match="instances"):
        await backend.apply("mem", Knobs(1, 4, 0))
    with pytest.raises(KnobRejected, match="unknown model"):
        await backend.apply("nope", Knobs())
    out = await backend.apply("mob", Knobs(4, 2, 1000))
    assert out.ok and out.in_progress and out.knobs_in_force == Knobs()
    clock.t += 2.0
    info = {m.name: m for m in await backend.list_models()}
    assert info["mob"].knobs == Knobs(4, 2, 1000)
    assert info["mem"].limits.max_instances == 3


async def test_gpu_telemetry(backend: SimBackend, clock: FakeClock) -> None:
    await backend.start()
    clock.t += 2.0
    await backend.observe()
    tel = await backend.gpu_telemetry()
    assert tel is not None
    assert tel.memory_used_mb == 5000.0 and tel.memory_total_mb == 16000.0
    assert tel.utilization_pct is not None and 0 < tel.utilization_pct <= 100


def test_constructor_rejects_bad_knobs() -> None:
    ps = shipped_profiles()
    with pytest.raises(ValueError, match=r"'m'.*instances"):
        SimBackend({"m": SimModelSpec(ps["synthetic/memory-bound"], Knobs(1, 9, 0))})
