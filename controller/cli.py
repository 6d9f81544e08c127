"""`dnnscaler controller`: run the central controller in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.controller.store import StoreError
from dnnscaler.core.logging import get_logger

log = get_logger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("controller", help="run the central controller (gRPC)")
    d = ControllerConfig.__dataclass_fields__
    p.add_argument("--listen", default=d["listen"].default, help="HOST:PORT to serve on")
    p.add_argument("--report-interval-s", type=float, default=d["report_interval_s"].default)
    p.add_argument("--stale-after-s", type=float, default=d["stale_after_s"].default)
    p.add_argument("--apply-timeout-s", type=float, default=d["apply_timeout_s"].default)
    p.add_argument(
        "--policy", default=d["default_policy"].default, help="default policy for new models"
    )
    p.add_argument("--default-slo-ms", type=float, default=d["default_slo_ms"].default)
    p.add_argument("--default-percentile", type=float, default=d["default_percentile"].default)
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (0: off)")
    p.add_argument("--metrics-addr", default="127.0.0.1")
    p.add_argument(
        "--state-path",
        help="the state database (SQLite): settings, each loop's policy state, history."
        " Default: controller.db in $STATE_DIRECTORY (systemd's StateDirectory=), else"
        " ':memory:' (nothing survives a restart)",
    )
    p.set_defaults(func=run)


def default_state_path() -> str:
    """Under systemd's ``StateDirectory=`` (``$STATE_DIRECTORY``), else in memory only."""
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(state_dir, "controller.db") if state_dir else ":memory:"


def config_from_args(args: argparse.Namespace) -> ControllerConfig:
    return ControllerConfig(
        listen=args.listen,
        report_interval_s=args.report_interval_s,
        stale_after_s=args.stale_after_s,
        apply_timeout_s=args.apply_timeout_s,
        default_policy=args.policy,
        default_slo_ms=args.default_slo_ms,
        default_percentile=args.default_percentile,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        state_path=args.state_path or default_state_path(),
    )


async def serve(config: ControllerConfig) -> None:
    if config.state_path == ":memory:":
        log.warning("state_not_persisted", hint="pass --state-path FILE to survive restarts")
    controller = Controller(config)
    await controller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await controller.stop()


def run(args: argparse.Namespace) -> int:
    try:
        asyncio.run(serve(config_from_args(args)))
    except StoreError as e:
        print(f"dnnscaler controller: {e}", file=sys.stderr)
        return 1
    return 0
