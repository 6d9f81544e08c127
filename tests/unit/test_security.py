"""Identities, certificates, token files and the security settings (pure logic; the real
TLS handshakes are in tests/e2e/test_secure_fleet.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dnnscaler.agents.config import AgentConfig
from dnnscaler.controller.auth import READ_ONLY, READ_WRITE
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.core.types import InvalidValue
from dnnscaler.security.certs import make
from dnnscaler.security.credentials import is_loopback
from dnnscaler.security.identity import (
    Identity,
    admin_identity,
    agent_identity,
    identities_of,
    parse_uri,
)
from dnnscaler.security.tokens import digest, line_for, lookup, parse_tokens
from dnnscaler.v1 import admin_pb2


def test_identity_uris_round_trip_any_printable_id() -> None:
    for ident in (
        agent_identity("node7-gpu0"),
        agent_identity("rack 3/gpu:1 é"),
        admin_identity("ops team", "rw"),
        admin_identity("viewer", "ro"),
    ):
        assert ident.uri().isascii()
        assert parse_uri(ident.uri()) == ident
    assert parse_uri("spiffe://example/agent") is None
    assert parse_uri("urn:dnnscaler:admin:root:x") is None  # not a role
    with pytest.raises(InvalidValue, match="role"):
        admin_identity("x", "root")


def test_certs_make_a_ca_and_leaves_that_name_their_identity(tmp_path: Path) -> None:
    issued = make(tmp_path, ["ctl.example"], ["gpu-a"], [("ops", "rw")], days=2)
    names = {p.name for p in issued.files}
    assert {"ca.pem", "ca.key", "controller.pem", "controller.key"} <= names
    assert {"agent-gpu-a.pem", "agent-gpu-a.key", "admin-ops.pem", "admin-ops.token"} <= names
    for p in issued.files:
        mode = stat.S_IMODE(p.stat().st_mode)
        secret = p.suffix in (".key", ".token")
        assert mode == (0o600 if secret else 0o644), p
    assert identities_of((tmp_path / "agent-gpu-a.pem").read_bytes()) == (
        Identity("agent", "gpu-a"),
    )
    assert identities_of((tmp_path / "admin-ops.pem").read_bytes()) == (
        Identity("admin", "ops", "rw"),
    )
    assert identities_of((tmp_path / "controller.pem").read_bytes()) == ()
    assert any(line.startswith("tls_client_ca = ") for line in issued.lines)
    # A second run adds to the same CA rather than making a new one.
    ca = (tmp_path / "ca.pem").read_bytes()
    again = make(tmp_path, [], ["gpu-b"], [], controller=False)
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert {p.name for p in again.files} == {"agent-gpu-b.pem", "agent-gpu-b.key"}
    with pytest.raises(InvalidValue, match="days"):
        make(tmp_path, [], [], [], days=0)


def test_token_files_hold_hashes_and_name_the_bad_line() -> None:
    ops, viewer = line_for("s3cret", "ops", "rw"), line_for("look", "viewer", "ro")
    text = f"# operators\n{ops}\n\n{viewer}  # ro\n"
    tokens = parse_tokens(text, "tokens")
    assert "s3cret" not in text
    assert lookup(tokens, "s3cret") == Identity("admin", "ops", "rw")
    assert lookup(tokens, "look") == Identity("admin", "viewer", "ro")
    assert lookup(tokens, "guess") is None
    for bad, why in (
        ("rw ops", "expected ROLE NAME sha256:HEX"),
        (f"root ops {digest('x')}", "role must be ro or rw"),
        ("rw ops sha256:abc", "not a SHA-256"),
        (f"rw a {digest('x')}\nro b {digest('x')}", "the same token twice"),
    ):
        with pytest.raises(InvalidValue, match=why) as e:
            parse_tokens(bad, "/etc/dnnscaler/admin-tokens")
        assert "/etc/dnnscaler/admin-tokens line" in str(e.value)
        assert e.value.field == "admin_tokens"


def test_every_admin_method_has_a_role() -> None:
    methods = {m.name for m in admin_pb2.DESCRIPTOR.services_by_name["AdminService"].methods}
    assert methods == READ_ONLY | READ_WRITE
    assert not READ_ONLY & READ_WRITE
    assert {"ListAgents", "ListModels", "History", "Watch"} <= READ_ONLY
    assert {"SetSlo", "SetPolicy", "Pause", "Drain"} <= READ_WRITE


def test_plaintext_only_when_said_and_only_on_loopback() -> None:
    assert is_loopback("127.0.0.1:1") and is_loopback("[::1]:1") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:1") and not is_loopback("10.0.0.1:1")
    assert not is_loopback("controller.example:1")
    with pytest.raises(InvalidValue, match="tls_cert: required") as e:
        ControllerConfig().check_transport()
    assert "dnnscaler certs" in str(e.value)
    ControllerConfig(insecure=True).check_transport()
    with pytest.raises(InvalidValue, match="insecure: plaintext is allowed only on loopback"):
        ControllerConfig(listen="0.0.0.0:50051", insecure=True)
    with pytest.raises(InvalidValue, match="admin_listen"):
        ControllerConfig(admin_listen="198.18.0.1:50052", insecure=True)
    with pytest.raises(InvalidValue, match="tls_key: must be set with tls_cert"):
        ControllerConfig(tls_cert="c.pem", tls_client_ca="ca.pem")
    with pytest.raises(InvalidValue, match="tls_client_ca: required"):
        ControllerConfig(tls_cert="c.pem", tls_key="c.key")
    with pytest.raises(InvalidValue, match="insecure: cannot be true"):
        ControllerConfig(tls_cert="c.pem", tls_key="c.key", tls_client_ca="ca", insecure=True)
    with pytest.raises(InvalidValue, match="agent_allow"):
        ControllerConfig(insecure=True, agent_allow=("",))
    # An agent: plaintext to a loopback controller only.
    AgentConfig(controller="127.0.0.1:50051")
    with pytest.raises(InvalidValue, match="tls_ca: required for a controller that is not on"):
        AgentConfig(controller="198.18.0.1:50051")
    AgentConfig(controller="198.18.0.1:50051", tls_ca="ca.pem", tls_cert="a.pem", tls_key="a.key")
    with pytest.raises(InvalidValue, match="tls_cert: must be set with tls_key"):
        AgentConfig(controller="198.18.0.1:50051", tls_ca="ca.pem", tls_key="a.key")
