"""Every observation a policy was asked about, with what it answered: a run on a real
server replayed offline, decision for decision.

A policy is a pure function of the observation and its state, so the same observations
must give the same answers (``replay`` checks it), and a miss seen once on a real server
(a CI run, a fresh clone) becomes a case a unit test can run in milliseconds, with every
window's figures to read. A trace is JSON lines: a header (the policy, its parameters and
the state it started from when it did not start afresh), then one line per decision.
``pack`` squeezes it into one line of base64 (gzip) for a test's failure message, which is
all a CI log keeps.
"""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import dataclass, field
from typing import Any

from dnnscaler.core.state_codec import from_data, to_data
from dnnscaler.core.types import InvalidValue, Knobs, Observation
from dnnscaler.policies.base import Decision, Policy
from dnnscaler.policies.registry import STATE_TYPES, make_policy


@dataclass(frozen=True)
class TraceStep:
    """One decision: what the policy saw, and what it answered."""

    obs: Observation
    knobs: Knobs
    reason: str


@dataclass(frozen=True)
class Trace:
    policy: str
    params: dict[str, Any] = field(default_factory=dict)  # JSON-able (``to_data``)
    start: Any = None  # the state before the first step (``to_data``); None: afresh
    steps: tuple[TraceStep, ...] = ()
    note: str = ""  # where it was recorded (a run, a box), for a reader of the file


@dataclass
class TraceRecorder:
    """What the controller's loop for one model keeps while tracing is on."""

    policy: str
    params: dict[str, Any]
    start: Any = None
    steps: list[TraceStep] = field(default_factory=list)

    def record(self, before: Any, obs: Observation, decision: Decision[Any]) -> None:
        """One decision; ``before``: the policy's state it was made from (None: afresh)."""
        if not self.steps and before is not None:
            self.start = to_data(before)
        self.steps.append(TraceStep(obs, decision.knobs, decision.reason))

    def trace(self) -> Trace:
        return Trace(self.policy, to_data(self.params), self.start, tuple(self.steps))


def dumps(trace: Trace) -> str:
    """JSON lines: the header, then one step per line."""
    head = {"policy": trace.policy, "params": trace.params, "start": trace.start}
    if trace.note:
        head["note"] = trace.note
    lines = [json.dumps(head)] + [json.dumps(to_data(s)) for s in trace.steps]
    return "\n".join(lines) + "\n"


def loads(text: str) -> Trace:
    """The trace ``dumps`` wrote; raises ``InvalidValue`` naming a malformed step's line
    and field."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty trace")
    head = json.loads(lines[0])
    if not isinstance(head, dict) or not isinstance(head.get("policy"), str):
        raise InvalidValue("line 1", "not a trace's header (no policy named)")
    steps = []
    for n, line in enumerate(lines[1:], start=2):
        try:
            steps.append(from_data(TraceStep, json.loads(line)))
        except InvalidValue as e:
            raise InvalidValue(f"line {n}: {e.field}", e.message) from None
    params = dict(head.get("params") or {})
    return Trace(head["policy"], params, head.get("start"), tuple(steps), head.get("note", ""))


def pack(trace: Trace) -> str:
    """The trace as one line of text (gzip, base64): ~5 KB for 50 windows."""
    return base64.b64encode(gzip.compress(dumps(trace).encode(), mtime=0)).decode()


def unpack(text: str) -> Trace:
    return loads(gzip.decompress(base64.b64decode(text.strip())).decode())


def _policy(trace: Trace) -> Policy[Any]:
    params = dict(trace.params)
    if isinstance(params.get("knobs"), dict):  # ``static``'s knobs, encoded
        params["knobs"] = from_data(Knobs, params["knobs"])
    return make_policy(trace.policy, **params)


def replay(trace: Trace, policy: Policy[Any] | None = None) -> list[Decision[Any]]:
    """``policy``'s decisions (the trace's own policy by default) on the trace's
    observations, from the state the trace started from."""
    policy = policy or _policy(trace)
    state = None if trace.start is None else from_data(STATE_TYPES[trace.policy], trace.start)
    out: list[Decision[Any]] = []
    for step in trace.steps:
        if state is None:
            state = policy.initial_state(step.obs)
        decision = policy.decide(step.obs, state)
        state = decision.state
        out.append(decision)
    return out


def differences(trace: Trace, decisions: list[Decision[Any]]) -> list[str]:
    """Where ``decisions`` (``replay``'s) differ from the recorded ones, one line each."""
    out = []
    for i, (step, d) in enumerate(zip(trace.steps, decisions, strict=True)):
        if (step.knobs, step.reason) != (d.knobs, d.reason):
            out.append(
                f"step {i} (t={step.obs.now_s:.2f}): recorded {step.knobs} ({step.reason!r}),"
                f" replayed {d.knobs} ({d.reason!r})"
            )
    return out


def window_lines(trace: Trace) -> list[str]:
    """One readable line per decision: time, knobs in force, load, tail, busy share, and
    what the policy answered."""
    if not trace.steps:
        return []
    t0 = trace.steps[0].obs.now_s
    out = []
    for s in trace.steps:
        w, k = s.obs.window, s.obs.knobs
        tail = s.obs.latency_ms
        busy = w.device_busy_share
        moved = "" if s.knobs == k else f" -> b{s.knobs.max_batch_size} n{s.knobs.instances}"
        out.append(
            f"t={s.obs.now_s - t0:5.1f} b{k.max_batch_size} n{k.instances}"
            f" {w.throughput_rps:6.0f} rps p{s.obs.slo.percentile:g}"
            f" {'-' if tail is None else f'{tail:.1f}'} ms"
            f" pending {w.pending_requests} busy {'-' if busy is None else f'{busy:.2f}'}:"
            f" {s.reason}{moved}"
        )
    return out
