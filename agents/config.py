"""Agent settings, validated at start-up (errors name the field)."""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, field

from dnnscaler.core.types import InvalidValue, shown
from dnnscaler.security.credentials import check_pair, is_loopback

BACKENDS = ("sim", "triton", "torchserve")
MAX_NAME_CHARS = 256  # what the controller accepts as an agent id (admin_checks)


def parse_sim_model(spec: str) -> tuple[str, str, float]:
    """``NAME=PROFILE@RPS`` → (name, profile, rps); errors name the field."""
    try:
        name, rest = spec.split("=", 1)
        profile, rps = rest.rsplit("@", 1)
        rate = float(rps)
    except ValueError:
        raise InvalidValue("sim_models", f"expected NAME=PROFILE@RPS, got {shown(spec)}") from None
    if not name or not profile or not (math.isfinite(rate) and rate >= 0):
        raise InvalidValue(
            "sim_models", f"expected NAME=PROFILE@RPS with a finite RPS >= 0, got {shown(spec)}"
        )
    return name, profile, rate


@dataclass(frozen=True)
class AgentConfig:
    controller: str = "127.0.0.1:50051"
    agent_id: str = ""
    node: str = field(default_factory=socket.gethostname)
    gpu_index: int = 0
    # Used until the controller's welcome says otherwise.
    report_interval_s: float = 1.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    # An update the backend cannot take yet (busy with an earlier change) is retried this long.
    busy_retry_s: float = 90.0
    busy_retry_interval_s: float = 0.5
    # An update whose apply failed at the server is not tried again with the same knobs
    # for apply_backoff_initial_s, doubling per failure up to apply_backoff_max_s: a
    # controller that keeps asking for knobs the server refuses must not turn into a
    # reload loop. Updates meanwhile are answered "held back" without touching the server.
    apply_backoff_initial_s: float = 2.0
    apply_backoff_max_s: float = 120.0
    # The controller's welcome must come this long after the stream opens, or the attempt
    # is given up and retried with backoff (a stalled link must not hold a reconnect).
    connect_timeout_s: float = 10.0
    # A backend call for a report (observe, reconnect) or a hello that takes longer than this
    # is reported as the backend not answering, and the agent goes on reporting meanwhile: a
    # hung server must not make the agent look dead to the controller (stale_after_s).
    backend_timeout_s: float = 5.0
    # Which inference server this agent steers, and how to reach it.
    backend: str = "sim"
    triton_grpc: str = "127.0.0.1:8001"
    triton_metrics: str = ""  # Triton's metrics URL (the queue backlog); "" = not read
    # TorchServe: its management API, its metrics URL ("" = not read), its access log on
    # this host (the tail latency; "" = none) and its model store on this host (needed for
    # batch size changes, which register a second version of the model; "" = none).
    torchserve_management: str = "http://127.0.0.1:8081"
    torchserve_metrics: str = "http://127.0.0.1:8082/metrics"
    torchserve_access_log: str = ""
    torchserve_model_store: str = ""
    # The sim backend: NAME=PROFILE@RPS per model, and a user profile file (JSON).
    sim_models: tuple[str, ...] = ()
    sim_profiles: str = ""
    sim_seed: int = 0
    # TLS to the controller: the CA that signed its certificate, and this agent's own
    # certificate and key (its identity: `dnnscaler certs --agent ID`). Without tls_ca the
    # agent speaks plaintext, which only a loopback controller address allows.
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # The name to verify the controller's certificate against, if not the dialled host.
    tls_server_name: str = ""
    # HTTP/2 pings on the stream this often; one unanswered for keepalive_timeout_s breaks
    # it (a partition is noticed even while nothing is sent), and the agent reconnects.
    keepalive_s: float = 10.0
    keepalive_timeout_s: float = 5.0
    # Prometheus metrics on this port (0: off), bound to metrics_addr.
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if ":" not in self.controller:
            raise InvalidValue("controller", f"expected HOST:PORT, got {shown(self.controller)}")
        check_pair("tls_", self.tls_cert, self.tls_key)
        if not self.tls_ca and not is_loopback(self.controller):
            raise InvalidValue(
                "tls_ca",
                f"required for a controller that is not on loopback ({shown(self.controller)}):"
                " plaintext is for one host only",
            )
        if self.tls_cert and not self.tls_ca:
            raise InvalidValue("tls_ca", "required with tls_cert")
        for name in ("agent_id", "node"):
            v = getattr(self, name)
            if len(v) > MAX_NAME_CHARS or not v.isprintable() or (name == "node" and not v):
                raise InvalidValue(
                    name, f"must be 1-{MAX_NAME_CHARS} printable characters, got {shown(v)}"
                )
        if self.gpu_index < 0:
            raise InvalidValue("gpu_index", "must be >= 0")
        if not 0 <= self.metrics_port <= 65535:
            raise InvalidValue("metrics_port", f"must be in 0..65535, got {self.metrics_port}")
        for name in (
            "report_interval_s",
            "backoff_initial_s",
            "backoff_max_s",
            "busy_retry_s",
            "busy_retry_interval_s",
            "apply_backoff_initial_s",
            "apply_backoff_max_s",
            "connect_timeout_s",
            "backend_timeout_s",
            "keepalive_s",
            "keepalive_timeout_s",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InvalidValue(name, f"must be > 0, got {v}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise InvalidValue("backoff_max_s", "must be >= backoff_initial_s")
        if self.apply_backoff_max_s < self.apply_backoff_initial_s:
            raise InvalidValue("apply_backoff_max_s", "must be >= apply_backoff_initial_s")
        if self.backend not in BACKENDS:
            raise InvalidValue(
                "backend", f"unknown backend {shown(self.backend)}; valid: {', '.join(BACKENDS)}"
            )
        if ":" not in self.triton_grpc:
            raise InvalidValue("triton_grpc", f"expected HOST:PORT, got {shown(self.triton_grpc)}")
        if self.triton_metrics and not self.triton_metrics.startswith(("http://", "https://")):
            raise InvalidValue(
                "triton_metrics", f"expected an http:// URL, got {shown(self.triton_metrics)}"
            )
        for name in ("torchserve_management", "torchserve_metrics"):
            v = getattr(self, name)
            if (v or name == "torchserve_management") and not v.startswith(("http://", "https://")):
                raise InvalidValue(name, f"expected an http:// URL, got {shown(v)}")
        for spec in self.sim_models:
            parse_sim_model(spec)

    @property
    def resolved_id(self) -> str:
        return self.agent_id or f"{self.node}-gpu{self.gpu_index}"
