"""`dnnscaler controller`: run the central controller in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import signal

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
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
    p.set_defaults(func=run)


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
    )


async def serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    await controller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await controller.stop()


def run(args: argparse.Namespace) -> int:
    asyncio.run(serve(config_from_args(args)))
    return 0
