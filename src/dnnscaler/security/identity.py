"""Who a certificate says its holder is.

An identity travels as a URI in the certificate's subjectAltName, so that a name and a
role cannot be confused with a host name: ``urn:dnnscaler:agent:<id>`` for an agent,
``urn:dnnscaler:admin:<role>:<name>`` for an operator (role ``ro`` or ``rw``). Ids are
percent-encoded (an agent id is any printable text; a URI is ASCII).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from cryptography import x509

from dnnscaler.core.types import InvalidValue

PREFIX = "urn:dnnscaler:"
ROLES = ("ro", "rw")  # read-only: status, models, history, watch; read-write: everything


@dataclass(frozen=True)
class Identity:
    """``kind`` is "agent" or "admin"; ``role`` is "" for an agent."""

    kind: str
    name: str
    role: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.role})" if self.role else "")

    def uri(self) -> str:
        if self.kind == "agent":
            return f"{PREFIX}agent:{quote(self.name, safe='')}"
        return f"{PREFIX}admin:{self.role}:{quote(self.name, safe='')}"


def agent_identity(agent_id: str) -> Identity:
    return Identity("agent", agent_id)


def admin_identity(name: str, role: str) -> Identity:
    if role not in ROLES:
        raise InvalidValue("role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    return Identity("admin", name, role)


def parse_uri(uri: str) -> Identity | None:
    """The identity a SAN URI names, or None if it is not one of ours."""
    if not uri.startswith(PREFIX):
        return None
    kind, _, rest = uri[len(PREFIX) :].partition(":")
    if kind == "agent" and rest:
        return Identity("agent", unquote(rest))
    if kind == "admin":
        role, _, name = rest.partition(":")
        if role in ROLES and name:
            return Identity("admin", unquote(name), role)
    return None


def identities_of(pem: bytes) -> tuple[Identity, ...]:
    """Every identity a PEM certificate's subjectAltName URIs name (usually one)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return tuple(i for i in (parse_uri(u) for u in uris) if i is not None)
