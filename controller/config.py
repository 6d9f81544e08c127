"""Controller settings: one dataclass, validated at start-up, units in field names."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dnnscaler.core.types import InvalidValue, Slo, shown


@dataclass(frozen=True)
class ControllerConfig:
    listen: str = "127.0.0.1:50051"
    report_interval_s: float = 1.0
    # An agent silent for this long is dropped (its stream is cancelled).
    stale_after_s: float = 15.0
    # An update not confirmed by the agent within this time is given up (the agent is
    # asked again only if the policy still wants the change).
    apply_timeout_s: float = 60.0
    default_policy: str = "dnnscaler"
    default_slo_ms: float = 100.0
    default_percentile: float = 99.0
    grace_s: float = 2.0
    # Prometheus metrics on this port (0: off), bound to metrics_addr.
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"
    # The state database (controller.store); ":memory:" keeps no state across restarts.
    state_path: str = ":memory:"

    def __post_init__(self) -> None:
        for name in ("report_interval_s", "stale_after_s", "apply_timeout_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InvalidValue(name, f"must be > 0, got {v}")
        if self.stale_after_s <= self.report_interval_s:
            raise InvalidValue("stale_after_s", "must be larger than report_interval_s")
        if not 0 <= self.metrics_port <= 65535:
            raise InvalidValue("metrics_port", f"must be in 0..65535, got {self.metrics_port}")
        if self.grace_s < 0:
            raise InvalidValue("grace_s", "must be >= 0")
        try:
            Slo(latency_ms=self.default_slo_ms, percentile=self.default_percentile)
        except InvalidValue as e:
            ours = {"latency_ms": "default_slo_ms", "percentile": "default_percentile"}
            raise InvalidValue(ours.get(e.field, e.field), e.message) from None
        if not self.state_path:
            raise InvalidValue("state_path", "must not be empty (':memory:' keeps no state)")
        if ":" not in self.listen:
            raise InvalidValue("listen", f"expected HOST:PORT, got {shown(self.listen)}")
        from dnnscaler.policies.registry import POLICY_NAMES

        if self.default_policy not in POLICY_NAMES:
            raise InvalidValue(
                "default_policy",
                f"unknown policy {shown(self.default_policy)}; valid: {', '.join(POLICY_NAMES)}",
            )

    @property
    def default_slo(self) -> Slo:
        return Slo(latency_ms=self.default_slo_ms, percentile=self.default_percentile)
