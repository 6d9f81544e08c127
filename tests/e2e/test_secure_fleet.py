"""A controller with mTLS and admin roles, as real processes over real TLS: agents prove
their id, operators their role, and everyone else is refused with the right code.

Certificates come from ``dnnscaler certs`` itself (the development CA)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.server import Controller
from dnnscaler.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc

from .processes import Daemon, free_port, run_cli, tls_args, tls_sim_agent

pytestmark = pytest.mark.timeout(240)

MODEL = "alpha=imagenet/Mob-V1-025@60"


@dataclass
class Fleet:
    tmp: Path
    tls: Path
    address: str
    admin_address: str
    controller: Daemon
    daemons: list[Daemon]
    agent_metrics_port: int = 0

    def pem(self, name: str) -> bytes:
        return (self.tls / name).read_bytes()

    def tails(self) -> str:
        return "\n".join(d.tail(25) for d in self.daemons)

    def agent(self, agent_id: str, cert: str, name: str = "", metrics_port: int = 0) -> Daemon:
        extra = ("--metrics-port", str(metrics_port)) if metrics_port else ()
        d = tls_sim_agent(
            self.tmp,
            name or agent_id,
            self.address,
            agent_id,
            self.tls,
            self.tls / f"agent-{cert}",
            "--sim-model",
            MODEL,
            *extra,
        )
        self.daemons.append(d)
        return d

    def as_admin(self, who: str, *args: str) -> tuple[int, str, str]:
        """``dnnscaler ARGS`` with operator ``who``'s certificate on the mTLS port."""
        tls = self.tls
        creds = ["--ca", str(tls / "ca.pem")]
        creds += ["--cert", str(tls / f"{who}.pem"), "--key", str(tls / f"{who}.key")]
        r = run_cli(*args, "--controller", self.address, *creds)
        return r.returncode, r.stdout, r.stderr

    def with_token(self, token_file: str | None, *args: str) -> tuple[int, str, str]:
        """``dnnscaler ARGS`` on the admin port (TLS, no client certificate)."""
        creds = ["--ca", str(self.tls / "ca.pem")]
        if token_file:
            creds += ["--token-file", str(self.tls / token_file)]
        r = run_cli(*args, "--controller", self.admin_address, *creds)
        return r.returncode, r.stdout, r.stderr


def _wait_log(d: Daemon, pattern: str, timeout_s: float, fleet: Fleet) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = d.log.read_text(errors="replace") if d.log.exists() else ""
        m = re.search(pattern, text)
        if m:
            return m.group(0)
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {d.name}'s log in {timeout_s} s:\n{fleet.tails()}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("secure")
    tls = tmp / "tls"
    r = run_cli(
        "certs",
        "--out",
        str(tls),
        "--agent",
        "gpu-a",
        "--agent",
        "gpu-b",
        "--agent",
        "gpu-c",
        "--admin",
        "ops:rw",
        "--admin",
        "viewer:ro",
    )
    assert r.returncode == 0, r.stderr
    # The printed token lines are the controller's token file.
    lines = re.findall(r"admin_tokens file: (\S+ \S+ sha256:[0-9a-f]{64})", r.stdout)
    assert len(lines) == 2, r.stdout
    (tmp / "admin-tokens").write_text("\n".join(lines) + "\n")
    port, admin_port = free_port(), free_port()
    address, admin_address = f"127.0.0.1:{port}", f"127.0.0.1:{admin_port}"
    ctl = Daemon(
        tmp,
        "controller",
        "controller",
        "--listen",
        address,
        *tls_args(tls),
        "--admin-listen",
        admin_address,
        "--admin-tokens",
        str(tmp / "admin-tokens"),
        "--agent-allow",
        "gpu-a",
        "--agent-allow",
        "gpu-b",
        "--report-interval-s",
        "0.5",
        "--stale-after-s",
        "5",
        "--policy",
        "static",
    )
    f = Fleet(tmp, tls, address, admin_address, ctl, [ctl])
    try:
        f.agent_metrics_port = free_port()
        f.agent("gpu-a", "gpu-a", metrics_port=f.agent_metrics_port)
        deadline = time.monotonic() + 60
        while True:
            code, out, err = f.as_admin("admin-viewer", "status", "--json")
            if code == 0 and any(a["agent_id"] == "gpu-a" for a in json.loads(out)["agents"]):
                break
            assert time.monotonic() < deadline, f"gpu-a never listed: {err}\n{f.tails()}"
            time.sleep(0.3)
        yield f
    finally:
        for d in f.daemons:
            d.stop()


def test_an_agent_with_its_certificate_connects_and_knob_updates_flow(fleet: Fleet) -> None:
    code, out, err = fleet.as_admin(
        "admin-ops", "set-policy", "alpha", "static", "--max-batch-size", "4", "--instances", "2"
    )
    assert code == 0, err
    deadline = time.monotonic() + 60
    while True:
        code, out, err = fleet.as_admin("admin-viewer", "model", "alpha", "--json")
        assert code == 0, err
        knobs = json.loads(out).get("knobs", {})
        if knobs.get("max_batch_size") == 4 and knobs.get("instances") == 2:
            break
        assert time.monotonic() < deadline, f"knobs never applied: {out}\n{fleet.tails()}"
        time.sleep(0.3)
    log = fleet.controller.log.read_text()
    assert '"transport": "mTLS"' in log or "transport=mTLS" in log, fleet.controller.tail()
    # The agent's own metrics say the same: connected, the knobs in force, the apply.
    url = f"http://127.0.0.1:{fleet.agent_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    for line in (
        "dnnscaler_agent_connected 1.0",
        'dnnscaler_agent_knob{knob="max_batch_size",model="alpha"} 4.0',
        'dnnscaler_agent_knob{knob="instances",model="alpha"} 2.0',
        "dnnscaler_agent_backend_available 1.0",
    ):
        assert line in text, f"{line} not in {url}:\n{text}"
    assert re.search(r'dnnscaler_agent_applies_total\{model="alpha",outcome="ok"\} [1-9]', text), (
        text
    )
    assert re.search(r'dnnscaler_agent_window_throughput_rps\{model="alpha"\} [0-9.]+', text), text


def test_a_certificate_for_another_agent_or_off_the_allow_list_is_refused(fleet: Fleet) -> None:
    # gpu-b's certificate claiming gpu-a: refused, and gpu-a keeps its stream.
    thief = fleet.agent("gpu-a", "gpu-b", name="thief")
    _wait_log(thief, r"PERMISSION_DENIED[^\n]*certificate is for agent 'gpu-b'", 30, fleet)
    # Signed by the CA, but not on agent_allow.
    stranger = fleet.agent("gpu-c", "gpu-c", name="stranger")
    _wait_log(stranger, r"PERMISSION_DENIED[^\n]*'gpu-c' is not in agent_allow", 30, fleet)
    _wait_log(fleet.controller, r"auth_refused", 10, fleet)
    thief.stop()
    stranger.stop()
    code, out, err = fleet.as_admin("admin-viewer", "status", "--json")
    assert code == 0, err
    agents = {a["agent_id"]: a for a in json.loads(out)["agents"]}
    assert set(agents) == {"gpu-a"}, out
    assert agents["gpu-a"].get("connected") is True, out


def test_anonymous_and_certificate_less_clients_get_nothing(fleet: Fleet) -> None:
    request = admin_pb2.ListAgentsRequest()
    with grpc.insecure_channel(fleet.address) as ch:  # plaintext to the TLS port
        with pytest.raises(grpc.RpcError) as e:
            admin_pb2_grpc.AdminServiceStub(ch).ListAgents(request, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    server_only = grpc.ssl_channel_credentials(root_certificates=fleet.pem("ca.pem"))
    with grpc.secure_channel(fleet.address, server_only) as ch:  # TLS, no client certificate
        with pytest.raises(grpc.RpcError) as e:
            admin_pb2_grpc.AdminServiceStub(ch).ListAgents(request, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # An anonymous agent: a hello for an existing agent id gets no stream.
        hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id="gpu-a", node="x"))
        stream = agent_pb2_grpc.AgentServiceStub(ch).Connect(iter([hello]), timeout=5)
        with pytest.raises(grpc.RpcError) as e:
            next(stream)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # The admin port: TLS without client certificates. Health is open there; admin calls
    # need a token.
    with grpc.secure_channel(fleet.admin_address, server_only) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as e:
            admin_pb2_grpc.AdminServiceStub(ch).ListAgents(request, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            admin_pb2_grpc.AdminServiceStub(ch).ListAgents(
                request, timeout=5, metadata=(("authorization", "Bearer guessed"),)
            )
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "unknown bearer token" in (e.value.details() or "")


def test_roles_read_only_reads_read_write_writes(fleet: Fleet) -> None:
    slo = ("set-slo", "alpha", "--latency-ms", "40")
    # Tokens on the admin port.
    code, out, err = fleet.with_token("admin-viewer.token", "status")
    assert code == 0, err
    code, out, err = fleet.with_token("admin-viewer.token", *slo)
    assert code == 5 and "PERMISSION_DENIED" in err and "may only read" in err, (code, err)
    code, out, err = fleet.with_token("admin-ops.token", *slo)
    assert code == 0, err
    code, out, err = fleet.with_token(None, "status")
    assert code == 5 and "UNAUTHENTICATED" in err, (code, err)
    # Certificates on the mTLS port.
    code, out, err = fleet.as_admin("admin-viewer", *slo)
    assert code == 5 and "PERMISSION_DENIED" in err, (code, err)
    code, out, err = fleet.as_admin("admin-ops", "set-slo", "alpha", "--latency-ms", "45")
    assert code == 0, err
    # An agent's certificate is no operator's.
    code, out, err = fleet.as_admin("agent-gpu-a", "status")
    assert code == 5 and "carries no admin role" in err, (code, err)
    code, out, err = fleet.as_admin("admin-viewer", "model", "alpha", "--json")
    assert code == 0 and json.loads(out)["slo"]["latency_ms"] == 45.0, out
    log = fleet.controller.log.read_text()
    assert "auth_refused" in log and "may only read" in log, fleet.controller.tail()


def test_unsafe_or_broken_security_settings_stop_the_daemons(tmp_path: Path) -> None:
    port = free_port()
    for args, expect in (
        ((), "tls_cert: required"),
        (("--insecure", "--listen", f"0.0.0.0:{port}"), "insecure: plaintext is allowed only on"),
        (
            (
                "--tls-cert",
                str(tmp_path / "absent.pem"),
                "--tls-key",
                str(tmp_path / "absent.key"),
                "--tls-client-ca",
                str(tmp_path / "ca.pem"),
                "--listen",
                f"127.0.0.1:{port}",
            ),
            "tls_key: cannot read",
        ),
    ):
        r = run_cli("controller", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert expect in r.stderr, (args, r.stderr)
    r = run_cli("agent", "--controller", "198.18.0.1:50051", "--backend", "sim")
    assert r.returncode == 2 and "tls_ca: required for a controller that is not on" in r.stderr


def test_reflection_over_mtls_lists_the_services_as_grpcurl_would(fleet: Fleet) -> None:
    # What `grpcurl -cacert ca.pem -cert admin-ops.pem -key admin-ops.key HOST:PORT list`
    # does (docs/operations.md): server reflection over mTLS with an operator certificate.
    creds = grpc.ssl_channel_credentials(
        root_certificates=fleet.pem("ca.pem"),
        private_key=fleet.pem("admin-ops.key"),
        certificate_chain=fleet.pem("admin-ops.pem"),
    )
    with grpc.secure_channel(fleet.address, creds) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {"dnnscaler.v1.AdminService", "dnnscaler.v1.AgentService"} <= services, services


async def test_reflection_can_be_turned_off() -> None:
    controller = Controller(ControllerConfig(listen="127.0.0.1:0", insecure=True, reflection=False))
    await controller.start()
    try:
        async with grpc.aio.insecure_channel(controller.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        def reflect() -> grpc.StatusCode:
            # The reflection client is synchronous: off the event loop the controller runs on.
            with grpc.insecure_channel(controller.address) as ch:
                try:
                    ProtoReflectionDescriptorDatabase(ch).get_services()
                except grpc.RpcError as e:
                    return e.code()
            return grpc.StatusCode.OK

        assert await asyncio.to_thread(reflect) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await controller.stop()
