"""gRPC credentials from PEM files, with errors that name the setting, and the loopback
rule for plaintext.

Plaintext is for a controller and its clients on one host: a listen address or a target
on a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``). Anything else needs TLS.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import grpc

from dnnscaler.core.types import InvalidValue, shown


def host_of(address: str) -> str:
    """The host part of ``HOST:PORT`` (``[v6]:PORT`` too)."""
    host = address.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(address: str) -> bool:
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_pem(field: str, path: str) -> bytes:
    """The bytes of a PEM file; errors name ``field`` and the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidValue(field, f"cannot read {shown(path)}: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise InvalidValue(field, f"{shown(path)} is not a PEM file")
    return data


def check_pair(prefix: str, cert: str, key: str) -> None:
    """A certificate and its key come together (``<prefix>cert`` / ``<prefix>key``)."""
    if bool(cert) != bool(key):
        missing = f"{prefix}key" if cert else f"{prefix}cert"
        raise InvalidValue(missing, f"must be set with {prefix}{'cert' if cert else 'key'}")


def server_credentials(
    cert: str, key: str, client_ca: str
) -> tuple[grpc.ServerCredentials, grpc.ServerCredentials]:
    """(mTLS, TLS) for the two listeners, from one read of the files: with mTLS every client
    must present a certificate ``client_ca`` signed; plain TLS asks for none (gRPC offers
    require-and-verify or do-not-ask, nothing between)."""
    pair = (read_pem("tls_key", key), read_pem("tls_cert", cert))
    ca = read_pem("tls_client_ca", client_ca)
    mtls = grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)
    return mtls, grpc.ssl_server_credentials([pair])


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """TLS to the controller, verified against ``ca``; with a client certificate if given."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem("tls_ca", ca),
        private_key=read_pem("tls_key", key) if key else None,
        certificate_chain=read_pem("tls_cert", cert) if cert else None,
    )


class _Bearer(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (on plaintext loopback too,
    where gRPC's own call credentials refuse to travel)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(tuple(d.metadata) if d.metadata else ()))
        md.add("authorization", f"Bearer {self._token}")
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def secure_channel(
    target: str,
    ca: str,
    cert: str = "",
    key: str = "",
    server_name: str = "",
    token: str = "",
    options: tuple[tuple[str, Any], ...] = (),
) -> grpc.aio.Channel:
    """A channel to ``target``: TLS when ``ca`` is set, else plaintext (loopback only); with
    a bearer token on every call if ``token`` is set."""
    interceptors = [_Bearer(token)] if token else None
    if not ca:
        if not is_loopback(target):
            raise InvalidValue(
                "tls_ca", f"TLS is required for a controller that is not on loopback ({target})"
            )
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)
    opts = list(options)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(
        target, channel_credentials(ca, cert, key), options=opts, interceptors=interceptors
    )
