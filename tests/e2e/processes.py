"""The controller and sim agents as real processes (``python -m dnnscaler.cli``), each
logging to a file whose tail goes into every failure message."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from dnnscaler.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")


def run_cli(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``dnnscaler ARGS`` as a user runs it: exit code, stdout and stderr (``prefix``: a
    command to run it under, e.g. ``ip netns exec NS``)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "dnnscaler.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def command_lines_with(marker: str) -> list[str]:
    """The command lines (200 characters each) of the processes that mention ``marker``:
    a server's processes carry its folders' paths, so a test finds what is left of its
    own servers by them, whatever runs beside it."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd:
                found.append(cmd.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """One ``dnnscaler`` process; ``log`` collects its output."""

    def __init__(
        self,
        logs: Path,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "dnnscaler.cli", "--log-level", "info", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.proc.poll()}) log tail ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def controller(logs: Path, address: str, *args: str, name: str = "controller") -> Daemon:
    """A controller on ``address``, plaintext (loopback: the tests' own host)."""
    return Daemon(logs, name, "controller", "--listen", address, "--insecure", *args)


def sim_agent(logs: Path, address: str, agent_id: str, *models: str) -> Daemon:
    """An agent with a simulated GPU (the only fake) serving ``NAME=PROFILE@RPS`` models."""
    sims = [arg for m in models for arg in ("--sim-model", m)]
    return Daemon(logs, agent_id, *_sim_agent_args(address, agent_id), *sims)


def _sim_agent_args(address: str, agent_id: str) -> tuple[str, ...]:
    return ("agent", "--controller", address, "--agent-id", agent_id, "--backend", "sim")


def tls_args(tls: Path) -> tuple[str, ...]:
    """A controller's TLS flags for the files ``dnnscaler certs --out tls`` made."""
    return (
        "--tls-cert",
        str(tls / "controller.pem"),
        "--tls-key",
        str(tls / "controller.key"),
        "--tls-client-ca",
        str(tls / "ca.pem"),
    )


def tls_sim_agent(
    logs: Path,
    name: str,
    address: str,
    agent_id: str,
    tls: Path,
    cert: Path,
    *extra: str,
    prefix: tuple[str, ...] = (),
) -> Daemon:
    """A sim agent speaking mTLS: the CA in ``tls/ca.pem``, its certificate ``cert`` (.pem,
    with the key beside it as .key)."""
    return Daemon(
        logs,
        name,
        *_sim_agent_args(address, agent_id),
        "--tls-ca",
        str(tls / "ca.pem"),
        "--tls-cert",
        str(cert.with_suffix(".pem")),
        "--tls-key",
        str(cert.with_suffix(".key")),
        "--backoff-max-s",
        "1",
        *extra,
        prefix=prefix,
    )


def wait_for_models(
    stub: admin_pb2_grpc.AdminServiceStub, want: set[str], daemons: list[Daemon], timeout_s: float
) -> list[admin_pb2.ModelStatus]:
    """Poll ListModels until ``want`` are all listed; fail with every daemon's log tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            models = list(stub.ListModels(admin_pb2.ListModelsRequest(), timeout=2).models)
            if want <= {m.model for m in models}:
                return models
        except grpc.RpcError:
            pass
        dead = [d for d in daemons if not d.alive()]
        tails = "\n".join(d.tail() for d in daemons)
        assert not dead, f"{[d.name for d in dead]} exited:\n{tails}"
        assert time.monotonic() < deadline, f"{sorted(want)} not listed in {timeout_s} s:\n{tails}"
        time.sleep(0.2)


def until(what: str, pred: Callable[[], T], daemons: list[Daemon], timeout_s: float = 30) -> T:
    """Poll ``pred`` until it returns something true and return that; fail with the
    daemons' log tails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        tails = "\n".join(d.tail() for d in daemons)
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s\n{tails}"
        time.sleep(0.2)
