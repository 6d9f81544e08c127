"""The registry, ``static`` and Clipper-style ``aimd``."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
from test_policies_support import obs

from dnnscaler.core.types import GpuTelemetry, KnobLimits, Knobs
from dnnscaler.policies.aimd import AimdPolicy
from dnnscaler.policies.registry import POLICY_NAMES, make_policy


def test_registry_names_and_unknown() -> None:
    assert POLICY_NAMES == ("dnnscaler", "paper", "aimd", "static")
    with pytest.raises(ValueError, match="dnnscaler, paper, aimd, static"):
        make_policy("nope")
    with pytest.raises(ValueError):
        make_policy("aimd", bogus=1)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_state_is_json_serialisable(name: str) -> None:
    policy = make_policy(name)
    o = obs(1.0, Knobs(8, 1, 0))
    state = policy.initial_state(o)
    knobs = Knobs(8, 1, 0)
    for t in range(1, 30):
        dec = policy.decide(obs(float(t), knobs), state)
        state, knobs = dec.state, dec.knobs
        json.dumps(asdict(state))
        assert dec.reason


def test_static_keeps_knobs_within_limits_and_memory() -> None:
    policy = make_policy("static", knobs=Knobs(64, 8, 500))
    o = obs(
        1.0,
        Knobs(1, 1, 0),
        limits=KnobLimits(max_batch_size=32, max_instances=10),
        gpu=GpuTelemetry(memory_used_mb=1000, memory_total_mb=4000),
        instance_memory_mb=1000,
    )
    dec = policy.decide(o, policy.initial_state(o))
    assert dec.knobs == Knobs(32, 4, 500)  # 1 in use + 3 more fit


def _run_aimd(latencies: list[float], window_s: float = 1.0) -> list[int]:
    """Batch size asked for after each window, the policy's knobs applied at once."""
    policy = AimdPolicy()
    knobs = Knobs(1, 1, 0)
    state = policy.initial_state(obs(0.0, knobs))
    out = []
    for i, lat in enumerate(latencies, start=1):
        dec = policy.decide(obs(i * window_s, knobs, p95_ms=lat, window_s=window_s), state)
        state, knobs = dec.state, dec.knobs
        assert knobs.instances == 1
        out.append(knobs.max_batch_size)
    return out


def test_aimd_adds_four_every_three_seconds_below_the_band() -> None:
    # SLO 50: band [42.5, 50]; p95 = 10 is below it.
    assert _run_aimd([10.0] * 9) == [1, 1, 5, 5, 5, 9, 9, 9, 13]


def test_aimd_aggregates_by_elapsed_time_not_by_count() -> None:
    # 1.5 s windows: the 3 s interval closes every second window.
    assert _run_aimd([10.0] * 4, window_s=1.5) == [1, 5, 5, 9]


def test_aimd_backs_off_to_ninety_percent_and_holds_in_band() -> None:
    policy = AimdPolicy()
    knobs = Knobs(40, 1, 0)
    state = policy.initial_state(obs(0.0, knobs))
    state = type(state)(batch_size=40)
    for t in (1.0, 2.0, 3.0):
        dec = policy.decide(obs(t, knobs, p95_ms=60.0), state)
        state = dec.state
    assert dec.knobs.max_batch_size == 36  # floor(40 * 0.9)
    knobs = dec.knobs
    for t in (4.0, 5.0, 6.0):
        dec = policy.decide(obs(t, knobs, p95_ms=45.0), state)
        state = dec.state
    assert dec.knobs.max_batch_size == 36  # 45 ms is inside [42.5, 50]


def test_aimd_waits_for_its_change_and_respects_the_limit() -> None:
    policy = AimdPolicy()
    limits = KnobLimits(max_batch_size=6)
    state = policy.initial_state(obs(0.0, Knobs(1, 1, 0), limits=limits))
    knobs = Knobs(1, 1, 0)
    for t in range(1, 10):
        dec = policy.decide(obs(float(t), knobs, p95_ms=5.0, limits=limits), state)
        state, knobs = dec.state, dec.knobs
    assert knobs.max_batch_size == 6
    # Not in force yet: the policy repeats its target and does not step again.
    dec = policy.decide(obs(10.0, Knobs(1, 1, 0), p95_ms=5.0, limits=limits), state)
    assert dec.knobs.max_batch_size == 6
