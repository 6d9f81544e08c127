"""The control loop of one (agent, model): observation in, maybe a knob update out.

It only gathers, calls the pure policy, records and hands back what to send; the stream
handler does the sending. One bad report or a policy error is logged and skipped, never
fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.store import StoredLoop
from dnnscaler.core.logging import get_logger
from dnnscaler.core.state_codec import from_data, to_data
from dnnscaler.core.types import (
    Approach,
    InvalidValue,
    KnobLimits,
    Knobs,
    Observation,
    Slo,
    WindowStats,
    instances_that_fit,
)
from dnnscaler.core.types import GpuTelemetry as Telemetry
from dnnscaler.policies.base import Policy
from dnnscaler.policies.decision_trace import TraceRecorder
from dnnscaler.policies.registry import STATE_TYPES, make_policy

log = get_logger(__name__)

# Knobs the agent could not apply are not sent again for this long, doubling per failure
# in a row: a policy that keeps wanting knobs the server refuses (a model whose
# initialize() fails at that batch) must not send an update and record a decision at
# every report. The agent backs off too (AgentConfig.apply_backoff_*): the server is safe
# either way; this keeps the stream and the decision history quiet.
REFUSED_BACKOFF_INITIAL_S = 2.0
REFUSED_BACKOFF_MAX_S = 120.0


@dataclass(frozen=True)
class PendingUpdate:
    generation: int
    knobs: Knobs
    sent_at_s: float


@dataclass
class ModelLoop:
    """Controller-side record and loop for one model on one agent."""

    agent_id: str
    model: str
    knobs: Knobs
    limits: KnobLimits
    generation: int
    policy_name: str
    policy_params: dict[str, Any] = field(default_factory=dict)
    instance_memory_mb: float | None = None
    available: bool = True
    message: str = ""
    approach: Approach = Approach.UNDECIDED
    last_window: WindowStats | None = None
    last_error: str = ""
    last_reason: str = ""
    knob_changes: int = 0
    # Decisions the policy made (a window while an update is pending asks it nothing): how
    # long the knobs in force were seen, which wall-clock windows overstate across a reload.
    decisions: int = 0
    pending: PendingUpdate | None = None
    # Every decision's observation and answer, kept only where asked for (benchmarks and
    # tests: ``Controller(trace_decisions=True)``), to replay a run offline.
    trace: TraceRecorder | None = None
    _policy: Policy[Any] | None = None
    _state: Any = None
    # The knobs whose apply failed last, how often in a row, and since when (the first
    # decision after the failure; ``decide`` holds them back until their backoff passes).
    _refused: Knobs | None = None
    _refusals: int = 0
    _refused_since_s: float | None = None

    @property
    def policy_state(self) -> Any:
        """The policy's state after its last decision (None before the first): read-only
        diagnostics (benchmarks print the plan a run ended on)."""
        return self._state

    def snapshot(self) -> StoredLoop:
        """What a restarted controller resumes this loop from (``resume``)."""
        return StoredLoop(
            agent_id=self.agent_id,
            model=self.model,
            policy=self.policy_name,
            state=None if self._state is None else to_data(self._state),
            knobs=self.knobs,
            pending_knobs=self.pending.knobs if self.pending is not None else None,
            generation=self.generation,
        )

    def resume(self, stored: StoredLoop) -> str:
        """Carry on from ``stored`` (this loop as a controller before a restart left it),
        given the knobs the agent reports in force (``self.knobs``): returns what was done.

        The policy's state is taken only if it belongs to the same policy and the agent's
        knobs are the ones it left in force or had just sent. Otherwise the agent's knobs
        win: the policy starts afresh from them, and the caller records why.
        """
        self.generation = max(self.generation, stored.generation)
        if stored.state is None:
            return "no policy state stored"
        if stored.policy != self.policy_name:
            return f"stored state is policy {stored.policy!r}'s, now {self.policy_name!r}"
        if self.knobs not in (stored.knobs, stored.pending_knobs):
            return (
                f"the agent's knobs in force {self.knobs} differ from the stored"
                f" {stored.knobs}: the agent's win, the policy starts from them"
            )
        try:
            state: Any = from_data(STATE_TYPES[stored.policy], stored.state)
        except (InvalidValue, KeyError, TypeError) as e:
            return f"stored policy state unreadable: {e}"
        self._policy = make_policy(self.policy_name, **self.policy_params)
        self._state = state
        return "resumed"

    def set_policy(self, name: str, params: dict[str, Any] | None = None) -> None:
        """Switch policy; the new one starts from the knobs in force at the next report."""
        self._policy = make_policy(name, **(params or {}))
        self.policy_name = name
        self.policy_params = dict(params or {})
        if self.trace is not None:
            self.trace = TraceRecorder(name, dict(self.policy_params))
        self._state = None

    def on_state(
        self,
        knobs: Knobs,
        limits: KnobLimits,
        generation: int,
        instance_memory_mb: float | None,
        available: bool,
        message: str,
    ) -> None:
        """Record what the agent says is actually true for this model."""
        self.knobs = knobs
        self.limits = limits
        self.instance_memory_mb = instance_memory_mb
        self.available = available
        self.message = message
        # After a controller restart the agent's generation may be ahead of ours.
        self.generation = max(self.generation, generation)
        if knobs == self._refused:  # in force after all: no longer refused
            self._refused, self._refusals = None, 0
        if self.pending is not None and generation >= self.pending.generation:
            self.pending = None

    def on_apply_result(
        self, generation: int, ok: bool, in_force: Knobs, error: str, in_progress: bool
    ) -> None:
        if self.pending is None or generation != self.pending.generation:
            return
        self.knobs = in_force
        if ok and in_progress:
            return  # accepted, still landing: the agent's report will confirm it
        wanted = self.pending.knobs
        self.pending = None
        if not ok:
            self.last_error = error or "apply failed"
            log.warning("apply_failed", agent=self.agent_id, model=self.model, error=error)
            self._refusals = self._refusals + 1 if wanted == self._refused else 1
            self._refused, self._refused_since_s = wanted, None
        elif wanted == self._refused:
            self._refused, self._refusals = None, 0

    def desired_knobs(self) -> Knobs:
        """What this loop last wanted in force: the update in flight, else the knobs."""
        return self.pending.knobs if self.pending is not None else self.knobs

    def restore(self, desired: Knobs, now_s: float) -> PendingUpdate | None:
        """A restarted agent (it reports generation 0: no memory of any update) came back
        with knobs other than ``desired``, which this loop had put in force before the agent
        was lost: send them again, so that the policy's kept state matches the server. An
        update in flight to the old process is dropped (it died with it). Not a policy
        move: ``knob_changes`` stays. Returns the update to send, or None when the knobs
        are already right or ``desired`` no longer fits the limits the agent now reports
        (then the agent's knobs stand and the policy takes up from them)."""
        self.pending = None
        if desired == self.knobs:
            return None
        try:
            desired.validate(self.limits)
        except InvalidValue as e:
            log.warning(
                "restore_out_of_limits", agent=self.agent_id, model=self.model, error=str(e)
            )
            return None
        self.generation += 1
        self.last_reason = f"restore {desired} after the agent restarted"
        self.pending = PendingUpdate(generation=self.generation, knobs=desired, sent_at_s=now_s)
        return self.pending

    def decide(
        self,
        now_s: float,
        window: WindowStats,
        slo: Slo,
        gpu: Telemetry,
        config: ControllerConfig,
        hold: str = "",
    ) -> PendingUpdate | None:
        """Run the policy on this window; return an update to send, if the knobs change.
        ``hold`` (why an operator stopped knob changes): the window is recorded, the policy
        is not asked, and it takes up from its state when the hold ends."""
        self.last_window = window
        if self.pending is not None:
            if now_s - self.pending.sent_at_s < config.apply_timeout_s:
                return None  # wait for the agent to confirm before deciding again
            log.warning("apply_timeout", agent=self.agent_id, model=self.model)
            self.last_error = f"update generation {self.pending.generation} not confirmed"
            self.pending = None
        if not self.available or hold:
            return None
        if self._policy is None:
            self.set_policy(self.policy_name, self.policy_params)
        assert self._policy is not None
        obs = Observation(
            now_s=now_s,
            model=self.model,
            slo=slo,
            knobs=self.knobs,
            limits=self.limits,
            window=window,
            gpu=gpu,
            instance_memory_mb=self.instance_memory_mb,
        )
        try:
            before = self._state  # None: the policy starts afresh from this observation
            if self._state is None:
                self._state = self._policy.initial_state(obs)
            decision = self._policy.decide(obs, self._state)
        except Exception as e:  # a policy bug must not take the controller down
            log.exception(
                "policy_error", agent=self.agent_id, model=self.model, policy=self.policy_name
            )
            self.last_error = f"policy {self.policy_name}: {e}"
            return None
        self._state = decision.state
        self.decisions += 1
        if self.trace is not None:
            self.trace.record(before, obs, decision)
        self.approach = decision.approach
        if decision.reason:
            self.last_reason = decision.reason
        want = decision.knobs
        if want == self.knobs:
            return None
        fit = instances_that_fit(self.limits, self.knobs.instances, self.instance_memory_mb, gpu)
        try:
            want.validate(self.limits)
            if want.instances > fit:
                raise InvalidValue(
                    "instances", f"{want.instances} would not fit in GPU memory (max {fit})"
                )
        except InvalidValue as e:
            log.error("policy_out_of_limits", agent=self.agent_id, model=self.model, error=str(e))
            self.last_error = f"policy {self.policy_name} proposed invalid knobs: {e}"
            return None
        if want == self._refused:
            if self._refused_since_s is None:
                self._refused_since_s = now_s
            wait_s = min(
                REFUSED_BACKOFF_INITIAL_S * 2 ** (self._refusals - 1), REFUSED_BACKOFF_MAX_S
            )
            if now_s - self._refused_since_s < wait_s:
                return None  # refused just now: asked again once the backoff passes
        self.generation += 1
        self.knob_changes += 1
        self.pending = PendingUpdate(generation=self.generation, knobs=want, sent_at_s=now_s)
        return self.pending
