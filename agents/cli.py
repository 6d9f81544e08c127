"""`dnnscaler agent`: run one per-GPU agent against a sim, a real Triton or a TorchServe."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Mapping
from typing import Any

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.backend import Backend
from dnnscaler.agents.config import BACKENDS, AgentConfig, parse_sim_model
from dnnscaler.core.sd_notify import Notifier, notify
from dnnscaler.core.settings import Resolved, add_flags, flags_of, resolve_file
from dnnscaler.core.types import InvalidValue
from dnnscaler.security.credentials import channel_credentials

FLAG_NAMES = {"sim_models": "--sim-model"}
CHOICES = {"backend": BACKENDS}
HELPS = {
    "controller": "controller HOST:PORT",
    "agent_id": "default: NODE-gpuINDEX",
    "node": "this host's name (default: the hostname)",
    "gpu_index": "the GPU this agent serves",
    "report_interval_s": "report period until the controller's welcome sets it",
    "backoff_initial_s": "first reconnect delay",
    "backoff_max_s": "longest reconnect delay",
    "busy_retry_s": "an update the backend cannot take yet is retried this long",
    "busy_retry_interval_s": "between those retries",
    "apply_backoff_initial_s": "knobs whose apply failed are not tried again for this long"
    " (doubling per failure)",
    "apply_backoff_max_s": "longest wait before knobs that failed are tried again",
    "connect_timeout_s": "the controller's welcome must come this soon, else reconnect",
    "backend_timeout_s": "a backend call slower than this is reported as not answering",
    "backend": "the inference server to steer",
    "triton_grpc": "triton backend: gRPC HOST:PORT",
    "triton_metrics": 'triton backend: metrics URL, read for the queue backlog ("": not read)',
    "torchserve_management": "torchserve backend: management API URL",
    "torchserve_metrics": 'torchserve backend: metrics URL ("": not read)',
    "torchserve_access_log": "torchserve backend: its access_log.log on this host (tail latency)",
    "torchserve_model_store": "torchserve backend: its model store on this host (batch changes)",
    "sim_models": "sim backend: serve PROFILE (see `dnnscaler bench sim --list`) as NAME under"
    " a Poisson load of RPS requests/s; repeatable (NAME=PROFILE@RPS)",
    "sim_profiles": "sim backend: a user profile file (JSON)",
    "sim_seed": "sim backend: random seed",
    "tls_ca": "the CA that signed the controller's certificate (unset: plaintext, loopback only)",
    "tls_cert": "this agent's certificate (its identity: `dnnscaler certs --agent ID`)",
    "tls_key": "this agent's private key",
    "tls_server_name": "verify the controller's certificate against this name",
    "keepalive_s": "HTTP/2 pings on the controller stream this often",
    "keepalive_timeout_s": "a ping unanswered this long breaks the stream (then: reconnect)",
    "metrics_port": "Prometheus metrics port (0: off): knobs, windows, applies, connection",
    "metrics_addr": "address the metrics port binds",
}
DEFAULT_SIM_MODELS = ("demo=imagenet/Mob-V1-025@200",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agent",
        help="run a per-GPU agent",
        description="Settings come from --config FILE's [agent] table, then DNNSCALER_*"
        " environment variables, then flags (each flag's help names its variable).",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML file with an [agent] table")
    add_flags(p, AgentConfig, HELPS, FLAG_NAMES, CHOICES)
    p.set_defaults(func=run)


def resolve_config(
    path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    doc: Mapping[str, Any] | None = None,
) -> Resolved:
    """The agent's settings: ``path``'s ``[agent]`` table, then ``env``, then ``flags``;
    the sim backend's models are checked against the known profiles here, before start."""
    resolved = resolve_file(AgentConfig, "agent", path, env, flags, FLAG_NAMES, doc)
    cfg: AgentConfig = resolved.value
    if cfg.backend == "sim":
        try:
            sim_specs(cfg)
        except InvalidValue as e:
            raise resolved.blame(e, f"{path} [agent]") from None
    return resolved


def sim_specs(cfg: AgentConfig) -> dict[str, Any]:
    """The sim backend's models; errors name the field (an unknown profile, a bad file)."""
    from dnnscaler.agents.backends.sim import SimModelSpec
    from dnnscaler.core.types import Knobs
    from dnnscaler.sim.profile import ProfileError, load_profiles, shipped_profiles

    profiles = dict(shipped_profiles())
    if cfg.sim_profiles:
        try:
            profiles.update(load_profiles(cfg.sim_profiles))
        except ProfileError as e:
            raise InvalidValue("sim_profiles", str(e)) from None
    specs = {}
    for spec in cfg.sim_models or DEFAULT_SIM_MODELS:
        name, prof, rate = parse_sim_model(spec)
        if prof not in profiles:
            raise InvalidValue(
                "sim_models", f"unknown profile {prof!r}; valid: {', '.join(sorted(profiles))}"
            )
        specs[name] = SimModelSpec(profile=profiles[prof], knobs=Knobs(), rate_rps=rate)
    return specs


def build_backend(cfg: AgentConfig) -> Backend:
    if cfg.backend == "triton":
        from dnnscaler.agents.backends.triton import TritonBackend

        return TritonBackend(cfg.triton_grpc, metrics_url=cfg.triton_metrics or None)
    if cfg.backend == "torchserve":
        from dnnscaler.agents.backends.torchserve import TorchServeBackend

        return TorchServeBackend(
            cfg.torchserve_management,
            cfg.torchserve_metrics or None,
            access_log=cfg.torchserve_access_log or None,
            model_store=cfg.torchserve_model_store or None,
        )
    from dnnscaler.agents.backends.sim import SimBackend

    return SimBackend(sim_specs(cfg), seed=cfg.sim_seed)


async def serve(config: AgentConfig, backend: Backend) -> None:
    agent = Agent(config, backend)
    notifier = Notifier()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        notify("STOPPING=1", "STATUS=stopping")
        agent.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    if config.tls_ca:
        # Unreadable key material stops the agent before systemd hears it is ready.
        channel_credentials(config.tls_ca, config.tls_cert, config.tls_key)
    # Ready = running its loop: connecting (and reconnecting) is the agent's job, not a
    # start-up condition (a controller down must not fail every agent unit's start).
    if config.metrics_port:
        agent.metrics.serve(config.metrics_port, config.metrics_addr)
    notifier.ready(f"agent {agent.agent_id}: reporting to {config.controller}")
    try:
        await agent.run()
    finally:
        await notifier.stopping()
        await backend.close()


def run(args: argparse.Namespace) -> int:
    config: AgentConfig = resolve_config(args.config, os.environ, flags_of(args, AgentConfig)).value
    asyncio.run(serve(config, build_backend(config)))
    return 0
