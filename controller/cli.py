"""`dnnscaler controller`: run the central controller in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.controller.store import StoreError
from dnnscaler.core.logging import get_logger
from dnnscaler.core.sd_notify import Notifier
from dnnscaler.core.settings import DEFAULT, Resolved, add_flags, flags_of, resolve_file
from dnnscaler.core.types import InvalidValue

log = get_logger(__name__)


FLAG_NAMES = {"default_policy": "--policy"}
HELPS = {
    "listen": "HOST:PORT to serve on",
    "report_interval_s": "how often agents report",
    "stale_after_s": "an agent silent this long is dropped",
    "apply_timeout_s": "an update unconfirmed this long is given up",
    "default_policy": "policy for new models",
    "default_slo_ms": "SLO latency for new models",
    "default_percentile": "SLO percentile for new models",
    "grace_s": "in-flight RPCs get this long at shutdown",
    "metrics_port": "Prometheus metrics port (0: off)",
    "metrics_addr": "address the metrics port binds",
    "state_path": "the state database (SQLite): settings, each loop's policy state, history;"
    " unset: controller.db in $STATE_DIRECTORY (systemd's StateDirectory=), else ':memory:'"
    " (nothing survives a restart)",
    "tls_cert": "the controller's TLS certificate (PEM)",
    "tls_key": "its private key",
    "tls_client_ca": "the CA whose client certificates (agents, operators) are accepted",
    "insecure": "plaintext, allowed only on a loopback listen address",
    "admin_listen": "a second HOST:PORT, TLS without client certificates, for bearer tokens",
    "admin_tokens": "operators' token hashes, one 'ROLE NAME sha256:HEX' per line",
    "agent_allow": "an agent id allowed to connect (repeatable; none: any the CA signed)",
    "reflection": "serve gRPC reflection",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "controller",
        help="run the central controller (gRPC)",
        description="Settings come from --config FILE's [controller] table, then DNNSCALER_*"
        " environment variables, then flags (each flag's help names its variable).",
    )
    p.add_argument("--config", metavar="FILE", help="a TOML file with a [controller] table")
    add_flags(p, ControllerConfig, HELPS, FLAG_NAMES)
    p.set_defaults(func=run)


def default_state_path() -> str:
    """Under systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``), else in memory only."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(state_dir, "controller.db") if state_dir else ":memory:"


def resolve_config(
    path: str | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    doc: Mapping[str, Any] | None = None,
) -> Resolved:
    """The controller's settings: ``path``'s ``[controller]`` table, then ``env``, then
    ``flags``; an unset ``state_path`` goes under ``$STATE_DIRECTORY``."""
    resolved = resolve_file(ControllerConfig, "controller", path, env, flags, FLAG_NAMES, doc)
    if resolved.origin["state_path"] == DEFAULT:
        where = default_state_path()
        origin = "$STATE_DIRECTORY" if where != ":memory:" else DEFAULT
        value = dataclasses.replace(resolved.value, state_path=where)
        resolved = Resolved(value, {**resolved.origin, "state_path": origin})
    return resolved


def servable(resolved: Resolved, path: str | None) -> Resolved:
    """``resolved``, if a controller may serve with it: TLS, or plaintext said explicitly."""
    try:
        resolved.value.check_transport()
    except InvalidValue as e:
        raise resolved.blame(e, path or "") from None
    return resolved


def config_from_args(args: argparse.Namespace) -> ControllerConfig:
    resolved = resolve_config(args.config, os.environ, flags_of(args, ControllerConfig))
    cfg: ControllerConfig = servable(resolved, args.config).value
    return cfg


# The controller process's garbage-collector thresholds (CPython's default: 700, 10, 10).
# With thousands of agents the process holds millions of tracked objects, and the default
# ran a full collection every few seconds: 538-570 ms pauses at 2,000 agents (in-process
# measurement, bench scale's agents, static policy), each stalling every stream and
# superseding a second of reports. With these, no full collection ran in steady state and
# the report-to-decision p99 fell from over 1 s to 21-86 ms; young collections still run
# every 50,000 allocations, so cyclic garbage is still freed.
GC_THRESHOLDS = (50_000, 50, 100)


async def serve(config: ControllerConfig) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    if config.state_path == ":memory:":
        log.warning(
            "state_not_persisted",
            hint="set state_path in the config file (or --state-path) to survive restarts",
        )
    controller = Controller(config)
    await controller.start()
    notifier = Notifier()
    notifier.ready(f"serving on {controller.address}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await notifier.stopping("health NOT_SERVING, draining in-flight calls")
    await controller.stop()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(config_from_args(args)))
    except StoreError as e:
        print(f"dnnscaler controller: {e}", file=sys.stderr)
        return 1
    return 0
