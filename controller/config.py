"""Controller settings: one dataclass, validated at start-up, units in field names."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dnnscaler.core.types import InvalidValue, Slo, shown
from dnnscaler.security.credentials import check_pair, is_loopback


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
    # Transport security (docs/operations.md, "Security"). TLS on `listen` with client
    # certificates (mTLS): agents and certificate-holding operators. Or plaintext, only
    # when `insecure` is set and only on a loopback address.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    insecure: bool = False
    # A second port, TLS without client certificates, for operators with a bearer token.
    admin_listen: str = ""
    # The operators' token hashes, one "ROLE NAME sha256:HEX" per line ("" = none).
    admin_tokens: str = ""
    # Agent ids allowed to connect; empty: any agent identity the client CA signed.
    agent_allow: tuple[str, ...] = ()
    reflection: bool = True

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
        self._check_security()
        from dnnscaler.policies.registry import POLICY_NAMES

        if self.default_policy not in POLICY_NAMES:
            raise InvalidValue(
                "default_policy",
                f"unknown policy {shown(self.default_policy)}; valid: {', '.join(POLICY_NAMES)}",
            )

    def _check_security(self) -> None:
        check_pair("tls_", self.tls_cert, self.tls_key)
        if self.tls_cert and self.insecure:
            raise InvalidValue("insecure", "cannot be true with tls_cert set")
        if self.tls_cert and not self.tls_client_ca:
            raise InvalidValue(
                "tls_client_ca",
                "required with tls_cert: agents prove their identity with a"
                " certificate this CA signed",
            )
        if self.insecure:
            for name in ("listen", "admin_listen"):
                address = getattr(self, name)
                if address and not is_loopback(address):
                    raise InvalidValue(
                        "insecure",
                        f"plaintext is allowed only on loopback; {name} is {shown(address)}",
                    )
        if self.admin_listen and ":" not in self.admin_listen:
            raise InvalidValue(
                "admin_listen", f"expected HOST:PORT, got {shown(self.admin_listen)}"
            )
        for agent_id in self.agent_allow:
            if not agent_id or len(agent_id) > 256 or not agent_id.isprintable():
                raise InvalidValue("agent_allow", f"not an agent id: {shown(agent_id)}")

    def check_transport(self) -> None:
        """Serving needs TLS or an explicit ``insecure`` (checked when a controller starts
        and by ``dnnscaler config check``; a config for the registry alone needs neither)."""
        if not self.tls_cert and not self.insecure:
            raise InvalidValue(
                "tls_cert",
                "required: set tls_cert, tls_key and tls_client_ca (`dnnscaler certs` makes a"
                " development set), or insecure = true for plaintext on a loopback address",
            )

    @property
    def default_slo(self) -> Slo:
        return Slo(latency_ms=self.default_slo_ms, percentile=self.default_percentile)
