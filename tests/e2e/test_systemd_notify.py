"""``Type=notify`` for real: the daemons tell a notify socket (the test's, as systemd's
would be) READY once serving, WATCHDOG while alive and STOPPING on SIGTERM, then exit 0."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .processes import Daemon, free_port

pytestmark = pytest.mark.timeout(120)


def _messages(sock: socket.socket, until: str, timeout_s: float, d: Daemon) -> list[str]:
    """Datagrams received until one holds ``until`` (each a list of KEY=VALUE lines)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        got.append(data)
        if until in data.splitlines():
            return got
    raise AssertionError(f"no {until} in {timeout_s} s; got {got}\n{d.tail()}")


@pytest.mark.parametrize("daemon", ["controller", "agent"])
def test_ready_watchdog_and_stopping_reach_systemd(daemon: str, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"}
        address = f"127.0.0.1:{free_port()}"
        if daemon == "controller":
            args = ("controller", "--listen", address, "--insecure")
        else:
            args = ("agent", "--controller", address, "--backend", "sim")
        d = Daemon(tmp_path, daemon, *args, env=env)
        try:
            ready = _messages(sock, "READY=1", 60, d)
            if daemon == "controller":
                # READY means serving: the health check answers by then.
                with grpc.insecure_channel(address) as ch:
                    stub = health_pb2_grpc.HealthStub(ch)
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert any("STATUS=" in m for m in ready), ready
            pings = _messages(sock, "WATCHDOG=1", 10, d)
            assert pings, d.tail()
            d.proc.send_signal(signal.SIGTERM)
            _messages(sock, "STOPPING=1", 20, d)
            assert d.proc.wait(30) == 0, d.tail()
        finally:
            d.stop()
