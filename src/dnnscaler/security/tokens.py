"""Admin bearer tokens.

The controller's token file holds one line per operator, ``ROLE NAME sha256:HEX``: the
SHA-256 of the token, never the token (a copy of the file grants nothing). ``#`` starts a
comment. A client sends ``authorization: Bearer <token>``; ``dnnscaler certs --admin``
writes a token and prints its line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from dnnscaler.core.types import InvalidValue, shown
from dnnscaler.security.identity import ROLES, Identity, admin_identity

HASH_PREFIX = "sha256:"


def digest(token: str) -> str:
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def line_for(token: str, name: str, role: str) -> str:
    admin_identity(name, role)  # validates the role
    return f"{role} {name} {digest(token)}"


def parse_tokens(text: str, where: str) -> dict[str, Identity]:
    """``{hash: identity}`` from a token file's text; errors name ``where`` and the line."""
    out: dict[str, Identity] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(HASH_PREFIX):
            raise InvalidValue(
                "admin_tokens",
                f"{where} line {n}: expected ROLE NAME sha256:HEX, got {shown(line)}",
            )
        role, name, h = parts
        if role not in ROLES:
            raise InvalidValue(
                "admin_tokens",
                f"{where} line {n}: role must be {' or '.join(ROLES)}, got {shown(role)}",
            )
        hexpart = h[len(HASH_PREFIX) :]
        if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise InvalidValue("admin_tokens", f"{where} line {n}: not a SHA-256 in hex")
        if h in out:
            raise InvalidValue("admin_tokens", f"{where} line {n}: the same token twice")
        out[h] = Identity("admin", name, role)
    return out


def read_tokens(path: str) -> dict[str, Identity]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InvalidValue(
            "admin_tokens", f"cannot read {shown(path)}: {e.strerror or e}"
        ) from None
    return parse_tokens(text, path)


def lookup(tokens: dict[str, Identity], token: str) -> Identity | None:
    """The identity holding ``token``, compared in constant time per entry."""
    h = digest(token)
    found = None
    for k, ident in tokens.items():
        if hmac.compare_digest(k, h):
            found = ident
    return found


def read_token_file(path: str) -> str:
    """A client's token: the file's first non-empty line."""
    try:
        lines = [x.strip() for x in Path(path).read_text().splitlines() if x.strip()]
    except OSError as e:
        raise InvalidValue("token_file", f"cannot read {shown(path)}: {e.strerror or e}") from None
    if not lines:
        raise InvalidValue("token_file", f"{shown(path)} is empty")
    return lines[0]
