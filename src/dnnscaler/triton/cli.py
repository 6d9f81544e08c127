"""``dnnscaler triton-local``: run a local Triton on loopback in the foreground.

Prints one JSON line with the server's addresses once it is ready, then serves until
SIGINT/SIGTERM, and stops it cleanly (process group and /dev/shm checked).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "triton-local",
        help="run a local Triton server (nvidia-pytriton wheel) on 127.0.0.1",
        description="Run tritonserver from the installed nvidia-pytriton wheel in explicit "
        "model-control mode on loopback, until SIGINT/SIGTERM.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-repo", type=Path, help="an existing model repository")
    src.add_argument(
        "--demo", action="store_true", help="serve the demo models (written to --demo-dir)"
    )
    p.add_argument("--demo-dir", type=Path, help="where to write the demo repository")
    p.add_argument(
        "--models", nargs="*", default=None, help="models to load (default: all in the repo)"
    )
    p.add_argument("--grpc-port", type=int, default=None, help="default: a free port")
    p.add_argument("--http-port", type=int, default=None, help="default: a free port")
    p.add_argument("--metrics-port", type=int, default=None, help="default: a free port")
    p.add_argument("--workdir", type=Path, default=None, help="log, traces, backend dir")
    p.add_argument(
        "--no-trace", action="store_true", help="do not write request traces (no tail latency)"
    )
    p.set_defaults(func=run)


def _models_in(repo: Path) -> list[str]:
    return sorted(d.name for d in repo.iterdir() if (d / "config.pbtxt").is_file())


def run(args: argparse.Namespace) -> int:
    from dnnscaler.triton.demo_models import write_repository
    from dnnscaler.triton.install import TritonNotInstalled
    from dnnscaler.triton.launcher import LocalTriton, TritonStartError

    if args.demo:
        repo = args.demo_dir or Path(tempfile.mkdtemp(prefix="dnnscaler-demo-repo-"))
        write_repository(repo, args.models or None)
    else:
        repo = args.model_repo
        if not repo.is_dir():
            print(f"dnnscaler triton-local: {repo} is not a directory", file=sys.stderr)
            return 2
    models = args.models if args.models else _models_in(repo)
    server = LocalTriton(
        repo,
        models,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        workdir=args.workdir,
        trace=not args.no_trace,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except (TritonNotInstalled, TritonStartError) as exc:
            print(f"dnnscaler triton-local: {exc}", file=sys.stderr)
            return 1
        print(
            json.dumps(
                {
                    "grpc_url": server.grpc_url,
                    "http_url": server.http_url,
                    "metrics_url": server.metrics_url,
                    "models": models,
                    "model_repo": str(repo),
                    "log": str(server.log_path),
                    "pid": server.pid,
                }
            ),
            flush=True,
        )
        while not stop.wait(0.5):
            if not server.running():
                print("dnnscaler triton-local: tritonserver exited", file=sys.stderr)
                print(server.log_tail(), file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
