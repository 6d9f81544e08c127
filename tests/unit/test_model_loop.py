"""The controller's per-(agent, model) loop: sends only on change, waits for confirmation,
gives up after the apply timeout, and never passes invalid knobs on."""

from __future__ import annotations

from dataclasses import dataclass

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.model_loop import ModelLoop
from dnnscaler.core.types import Approach, GpuTelemetry, KnobLimits, Knobs, Slo, WindowStats
from dnnscaler.policies.base import Decision

CFG = ControllerConfig(default_policy="static", apply_timeout_s=10.0)
SLO = Slo(latency_ms=50.0)
W = WindowStats(window_s=1.0, completed=10, latency_p99_ms=10.0)


@dataclass(frozen=True)
class Want:
    """A policy that always wants the given knobs (counts its calls in state)."""

    knobs: Knobs
    name: str = "want"

    def initial_state(self, obs: object) -> int:
        return 0

    def decide(self, obs: object, state: int) -> Decision[int]:
        return Decision(self.knobs, state + 1, Approach.BATCHING, "test")


def _loop(policy: Want, limits: KnobLimits | None = None, mem: float | None = None) -> ModelLoop:
    loop = ModelLoop(
        agent_id="a",
        model="m",
        knobs=Knobs(),
        limits=limits or KnobLimits(),
        generation=0,
        policy_name="static",
        instance_memory_mb=mem,
    )
    loop._policy = policy
    return loop


def test_update_only_on_change_and_waits_for_confirmation() -> None:
    loop = _loop(Want(Knobs(8, 1, 0)))
    u = loop.decide(0.0, W, SLO, GpuTelemetry(), CFG)
    assert u is not None and u.generation == 1 and u.knobs == Knobs(8, 1, 0)
    # Not confirmed yet: no second update, even though the knobs still differ.
    assert loop.decide(1.0, W, SLO, GpuTelemetry(), CFG) is None
    # The agent reports generation 1 with the new knobs in force: pending clears.
    loop.on_state(Knobs(8, 1, 0), KnobLimits(), 1, None, True, "")
    assert loop.pending is None
    assert loop.decide(2.0, W, SLO, GpuTelemetry(), CFG) is None  # same knobs: nothing sent
    assert loop.knob_changes == 1
    # The policy was asked twice: the window while the update was pending asked it nothing
    # (what ``bench converge`` counts as windows seen on the knobs in force).
    assert loop.decisions == 2


def test_apply_timeout_then_retry() -> None:
    loop = _loop(Want(Knobs(8, 1, 0)))
    assert loop.decide(0.0, W, SLO, GpuTelemetry(), CFG) is not None
    assert loop.decide(5.0, W, SLO, GpuTelemetry(), CFG) is None
    u = loop.decide(11.0, W, SLO, GpuTelemetry(), CFG)
    assert u is not None and u.generation == 2
    assert "not confirmed" in loop.last_error


def test_failed_apply_is_recorded_and_in_force_knobs_kept() -> None:
    loop = _loop(Want(Knobs(8, 1, 0)))
    u = loop.decide(0.0, W, SLO, GpuTelemetry(), CFG)
    assert u is not None
    loop.on_apply_result(u.generation, False, Knobs(), "reload failed", False)
    assert loop.pending is None and loop.knobs == Knobs() and "reload failed" in loop.last_error


def test_invalid_policy_output_is_not_sent() -> None:
    loop = _loop(Want(Knobs(500, 1, 0)), limits=KnobLimits(max_batch_size=64))
    assert loop.decide(0.0, W, SLO, GpuTelemetry(), CFG) is None
    assert "max_batch_size" in loop.last_error
    # Would not fit in GPU memory: 2 GB free, 1.5 GB per instance, 1 running → at most 2.
    loop = _loop(Want(Knobs(1, 3, 0)), mem=1500.0)
    gpu = GpuTelemetry(memory_used_mb=2000, memory_total_mb=4000)
    assert loop.decide(0.0, W, SLO, gpu, CFG) is None
    assert "memory" in loop.last_error


def test_agent_ahead_after_controller_restart() -> None:
    loop = _loop(Want(Knobs(4, 1, 0)))
    loop.on_state(Knobs(1, 1, 0), KnobLimits(), 7, None, True, "")
    u = loop.decide(0.0, W, SLO, GpuTelemetry(), CFG)
    assert u is not None and u.generation == 8


def test_policy_crash_is_contained() -> None:
    class Boom(Want):
        def decide(self, obs: object, state: int) -> Decision[int]:
            raise RuntimeError("bug")

    loop = _loop(Boom(Knobs()))
    assert loop.decide(0.0, W, SLO, GpuTelemetry(), CFG) is None
    assert "bug" in loop.last_error


def test_refused_knobs_are_asked_again_only_after_a_doubling_backoff() -> None:
    """#18: a policy that keeps wanting knobs the server refuses sent an update (and stored
    a decision) at every report. Now: again after 2 s, then 4 s, counted from the first
    decision after each failure; other knobs go at once."""
    loop = _loop(Want(Knobs(8, 1, 0)))
    u = loop.decide(0.0, W, SLO, GpuTelemetry(), CFG)
    assert u is not None
    loop.on_apply_result(u.generation, False, Knobs(), "load failed", False)
    sent = [t for t in (1.0, 1.5, 2.5, 3.1) if loop.decide(t, W, SLO, GpuTelemetry(), CFG)]
    assert sent == [3.1]  # 2 s after the first decision past the failure (1.0)
    assert loop.pending is not None
    loop.on_apply_result(loop.pending.generation, False, Knobs(), "load failed", False)
    sent = [t for t in (4.0, 6.0, 7.9, 8.1) if loop.decide(t, W, SLO, GpuTelemetry(), CFG)]
    assert sent == [8.1]  # then 4 s
    assert loop.knob_changes == 3
    # Other knobs are not held back.
    loop.pending = None
    loop._policy = Want(Knobs(2, 1, 0))
    assert loop.decide(8.2, W, SLO, GpuTelemetry(), CFG) is not None
