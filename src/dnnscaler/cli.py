"""The `dnnscaler` command: one entry point, one subcommand per job.

Each subsystem contributes its subcommands through a ``register(subparsers)`` function;
every handler returns a process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from types import FrameType

from dnnscaler import __version__
from dnnscaler.core.logging import configure_logging
from dnnscaler.core.types import InvalidValue

# Modules that contribute subcommands, in help order.
COMMAND_MODULES = (
    "dnnscaler.controller.cli",
    "dnnscaler.agents.cli",
    "dnnscaler.admin_cli",
    "dnnscaler.config_cli",
    "dnnscaler.security.certs",
    "dnnscaler.demo",
    "dnnscaler.bench.cli",
    "dnnscaler.triton.cli",
    "dnnscaler.torchserve.cli",
    "dnnscaler.loadgen.cli",
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is (as Ctrl-C would be), so that ``finally``
    blocks and context managers run: temporary folders go, local servers stop."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnnscaler",
        description="Throughput maximization of DNN inference under latency SLOs: "
        "batching or multi-tenancy, decided online per model.",
    )
    parser.add_argument("--version", action="version", version=f"dnnscaler {__version__}")
    parser.add_argument("--log-level", default="info", help="debug, info, warning, error")
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: when stderr is not a TTY)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # subsystem not installed in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        configure_logging(args.log_level, json=args.log_json)
    except ValueError as e:
        print(f"dnnscaler: {e}", file=sys.stderr)
        return 2
    # Commands that serve until stopped (controller, agent, triton-local) install their own
    # SIGTERM handling; the others (benchmarks, the demo, loadgen) clean up as on Ctrl-C.
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except InvalidValue as e:
        print(f"dnnscaler: invalid configuration: {e}", file=sys.stderr)
        return 2
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
