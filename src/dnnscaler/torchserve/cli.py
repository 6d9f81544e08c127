"""``dnnscaler torchserve-local``: run a local TorchServe on loopback in the foreground.

Builds the demo model archives (or serves an existing model store), prints one JSON line
with the server's addresses, its access log and model store (what an agent needs) once
the models are registered, serves until SIGINT/SIGTERM, then stops it cleanly: no Java
or worker process and no work folder left.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from dnnscaler.torchserve.launcher import TorchServePorts


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "torchserve-local",
        help="run a local TorchServe (pip extra dnnscaler[torchserve], Java 17) on 127.0.0.1",
        description="Run TorchServe on loopback with its own ports, TMPDIR and logs, serving "
        "the demo models (archives built with torch-model-archiver) or a model store, until "
        "SIGINT/SIGTERM. Token auth is off because every address is loopback.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-store", type=Path, help="an existing model store (NAME.mar)")
    src.add_argument("--demo", action="store_true", help="serve the demo models")
    p.add_argument("--demo-dir", type=Path, help="where to write the demo archives")
    p.add_argument("--models", nargs="*", default=None, help="models to register (default: all)")
    p.add_argument(
        "--ports",
        default=None,
        help="INFERENCE,MANAGEMENT,METRICS,GRPC_INFERENCE,GRPC_MANAGEMENT (default: free ports)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="config, TMPDIR and logs")
    p.set_defaults(func=run)


def _ports(text: str | None) -> TorchServePorts | None:
    if text is None:
        return None
    parts = [int(x) for x in text.split(",")]
    if len(parts) != 5 or not all(0 < x < 65536 for x in parts):
        raise ValueError("--ports takes five ports, comma-separated")
    return TorchServePorts(*parts)


def run(args: argparse.Namespace) -> int:
    from dnnscaler.torchserve.archives import ArchiveError, build_demo_store
    from dnnscaler.torchserve.install import TorchServeNotInstalled
    from dnnscaler.torchserve.launcher import LocalTorchServe, TorchServeStartError, describe

    try:
        ports = _ports(args.ports)
    except ValueError as exc:
        print(f"dnnscaler torchserve-local: {exc}", file=sys.stderr)
        return 2
    if args.demo:
        store = args.demo_dir or Path(tempfile.mkdtemp(prefix="dnnscaler-demo-store-"))
        try:
            models = build_demo_store(store, args.models or None)
        except (ArchiveError, KeyError) as exc:
            print(f"dnnscaler torchserve-local: {exc}", file=sys.stderr)
            return 2
    else:
        store = args.model_store
        if not store.is_dir():
            print(f"dnnscaler torchserve-local: {store} is not a directory", file=sys.stderr)
            return 2
        models = args.models or sorted(
            p.stem for p in store.glob("*.mar") if ".dnnscaler-v" not in p.name
        )
    server = LocalTorchServe(store, models, ports=ports, workdir=args.workdir)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except (TorchServeNotInstalled, TorchServeStartError, ArchiveError) as exc:
            print(f"dnnscaler torchserve-local: {exc}", file=sys.stderr)
            return 1
        print(describe(server), flush=True)
        while not stop.wait(0.5):
            if not server.running():
                print("dnnscaler torchserve-local: TorchServe exited", file=sys.stderr)
                print(server.log_tail(), file=sys.stderr)
                return 1
        return 0
    finally:
        server.stop()
        if args.demo and args.demo_dir is None:  # archives we built in a folder we made
            shutil.rmtree(store, ignore_errors=True)
        for s, handler in old.items():
            signal.signal(s, handler)


__all__ = ["register", "run"]
