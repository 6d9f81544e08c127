"""``dnnscaler certs``: a development CA and the controller's, agents' and operators'
certificates (ECDSA P-256), with the config lines that use them.

For development and tests. In production bring your own CA (docs/operations.md,
"Security"): the controller only needs the CA that signs agents and operators, and each
certificate's identity URI (``security.identity``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dnnscaler.core.types import InvalidValue, shown
from dnnscaler.security.identity import ROLES, Identity, admin_identity, agent_identity
from dnnscaler.security.tokens import line_for, new_token

CA_DAYS = 3650


@dataclass
class Issued:
    """What one run wrote (paths) and the config lines that use it."""

    files: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, secret: bool, out: Issued) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    out.files.append(path)


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dnnscaler"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn[:64]),
        ]
    )


def load_or_make_ca(
    out_dir: Path, issued: Issued
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``out_dir`` (ca.pem, ca.key), made if absent: later runs add leaves to it."""
    cert_path, key_path = out_dir / "ca.pem", out_dir / "ca.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidValue("ca.key", f"{shown(str(key_path))} is not an EC key")
        return cert, key
    key = _key()
    now = dt.datetime.now(dt.UTC)
    name = _name("dnnscaler development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _pem_key(key), True, issued)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), False, issued)
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    sans: list[x509.GeneralName],
    server: bool,
    days: int,
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a leaf signed by ``ca``."""
    ca_cert, ca_key = ca
    key = _key()
    now = dt.datetime.now(dt.UTC)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _host_name(h: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(h))
    except ValueError:
        return x509.DNSName(h)


def _safe(name: str) -> str:
    """A file-name form of an identity's name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "_"


def make(
    out_dir: Path,
    hosts: list[str],
    agents: list[str],
    admins: list[tuple[str, str]],
    days: int = 365,
    controller: bool = True,
) -> Issued:
    """Write the CA (if new), a controller certificate for ``hosts`` (plus localhost and
    127.0.0.1), one per agent id and one certificate and token per (admin name, role)."""
    if days < 1:
        raise InvalidValue("days", f"must be >= 1, got {days}")
    idents = [agent_identity(a) for a in agents] + [admin_identity(n, r) for n, r in admins]
    for ident in idents:
        if not ident.name or not ident.name.isprintable():
            raise InvalidValue(
                ident.kind, f"a name must be printable text, got {shown(ident.name)}"
            )
    issued = Issued()
    ca = load_or_make_ca(out_dir, issued)
    ca_path = out_dir / "ca.pem"
    if controller:
        names = [
            "localhost",
            "127.0.0.1",
            *(h for h in hosts if h not in ("localhost", "127.0.0.1")),
        ]
        pem, key = issue(
            ca, names[-1] if hosts else "localhost", [_host_name(h) for h in names], True, days
        )
        _write(out_dir / "controller.pem", pem, False, issued)
        _write(out_dir / "controller.key", key, True, issued)
        issued.lines += [
            "# controller.toml, [controller]",
            f'tls_cert = "{out_dir / "controller.pem"}"',
            f'tls_key = "{out_dir / "controller.key"}"',
            f'tls_client_ca = "{ca_path}"',
        ]
    for ident in idents:
        base = f"{ident.kind}-{_safe(ident.name)}"
        pem, key = issue(ca, ident.name, [x509.UniformResourceIdentifier(ident.uri())], False, days)
        _write(out_dir / f"{base}.pem", pem, False, issued)
        _write(out_dir / f"{base}.key", key, True, issued)
        if ident.kind == "agent":
            issued.lines += [
                f"# agent.toml of {ident.name}, [agent]",
                f'agent_id = "{ident.name}"',
                f'tls_ca = "{ca_path}"',
                f'tls_cert = "{out_dir / base}.pem"',
                f'tls_key = "{out_dir / base}.key"',
            ]
        else:
            token = new_token()
            _write(out_dir / f"{base}.token", (token + "\n").encode(), True, issued)
            issued.lines += [
                f"# {ident}: with its certificate, or with its token",
                f"dnnscaler status --ca {ca_path} --cert {out_dir / base}.pem"
                f" --key {out_dir / base}.key",
                f"dnnscaler status --ca {ca_path} --token-file {out_dir / base}.token"
                "  # on the controller's admin_listen",
                "# its line in the controller's admin_tokens file: "
                + line_for(token, ident.name, ident.role),
            ]
    return issued


def identity_arg(text: str) -> tuple[str, str]:
    name, _, role = text.rpartition(":")
    if not name or role not in ROLES:
        raise argparse.ArgumentTypeError(
            f"expected NAME:ROLE with ROLE {' or '.join(ROLES)}, got {text!r}"
        )
    return name, role


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certs",
        help="make a development CA and controller, agent and admin certificates",
        description="Make (or add to) a development CA in --out: a controller certificate for"
        " --host names, one client certificate per --agent id and per --admin NAME:ROLE (with"
        " a bearer token), and print the config lines that use them. Production: your own CA"
        " (docs/operations.md).",
    )
    p.add_argument("--out", required=True, help="folder for the files (keys are mode 0600)")
    p.add_argument("--host", action="append", default=[], help="a name or IP agents dial")
    p.add_argument("--agent", action="append", default=[], help="an agent id to certify")
    p.add_argument(
        "--admin", action="append", default=[], type=identity_arg, help="NAME:ro or NAME:rw"
    )
    p.add_argument("--days", type=int, default=365, help="validity of the leaf certificates")
    p.add_argument(
        "--no-controller", action="store_true", help="only add agents/admins to an existing CA"
    )
    p.set_defaults(func=_main)


def _main(a: argparse.Namespace) -> int:
    out = Path(a.out).resolve()
    issued = make(out, a.host, a.agent, a.admin, a.days, controller=not a.no_controller)
    print(f"wrote {len(issued.files)} files under {out}:")
    for f in issued.files:
        print(f"  {f.relative_to(out)}")
    print()
    for line in issued.lines:
        print(line)
    sys.stdout.flush()
    return 0


__all__ = ["Identity", "Issued", "make", "register"]
