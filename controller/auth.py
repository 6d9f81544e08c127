"""Who may call what: agents prove their id with a certificate, operators hold a role.

- An agent's hello is accepted only from a peer whose certificate names that agent id
  (``security.identity``), and, if ``agent_allow`` is set, only for an id on it. A second
  stream for the same id therefore comes from the same identity, or is refused.
- Admin calls need an operator: a certificate with an admin role, or a bearer token from
  the controller's token file. Status, models, history and watch are read-only; the rest
  need read-write. Health checking is not guarded.
- Plaintext on loopback (``insecure``): no certificates exist, so agents are not
  authenticated, and admin calls are open unless a token file is set.

Refusals are UNAUTHENTICATED (no credentials, or unknown ones) or PERMISSION_DENIED
(known, but not for this), each logged with the method and the peer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from dnnscaler.core.logging import get_logger
from dnnscaler.security.identity import Identity, identities_of
from dnnscaler.security.tokens import lookup

log = get_logger(__name__)

ADMIN_SERVICE = "/dnnscaler.v1.AdminService/"
READ_ONLY = frozenset({"ListAgents", "ListModels", "GetModel", "History", "Watch"})
READ_WRITE = frozenset(
    {"SetSlo", "SetPolicy", "ClearSlo", "Pause", "Resume", "Drain", "Reprofile", "ForgetAgent"}
)


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def peer_identities(context: grpc.aio.ServicerContext) -> tuple[Identity, ...]:
    """The identities the peer's verified client certificate names (none without one)."""
    pems = context.auth_context().get("x509_pem_cert") or []
    return identities_of(pems[0]) if pems else ()


def _bearer(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            v = value if isinstance(value, str) else value.decode()
            scheme, _, token = v.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


@dataclass(frozen=True)
class Guard:
    """The controller's access rules; ``secure``: TLS is on (credentials required)."""

    secure: bool = False
    tokens: dict[str, Identity] = field(default_factory=dict)
    agent_allow: frozenset[str] = frozenset()

    def agent(self, context: grpc.aio.ServicerContext, agent_id: str) -> None:
        """Raise ``Refused`` unless the peer may speak for ``agent_id``."""
        if not self.secure:
            return
        ids = [i.name for i in peer_identities(context) if i.kind == "agent"]
        if not ids:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "an agent must present a client certificate naming its agent id",
            )
        if agent_id not in ids:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate is for agent {ids[0]!r}, the hello says {agent_id!r}",
            )
        if self.agent_allow and agent_id not in self.agent_allow:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"agent {agent_id!r} is not in agent_allow"
            )

    def admin(self, context: grpc.aio.ServicerContext, method: str) -> Identity | None:
        """The operator calling ``method`` (None: open, plaintext without tokens), or
        raise ``Refused``."""
        token = _bearer(context)
        if token is not None:
            who = lookup(self.tokens, token) if token else None
            if who is None:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        else:
            peers = peer_identities(context)
            admins = [i for i in peers if i.kind == "admin"]
            if not admins and not (self.secure or self.tokens):
                return None
            if any(i.kind == "agent" for i in peers) and not admins:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED, "an agent certificate carries no admin role"
                )
            if not admins:
                raise Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "admin calls need a client certificate with an admin role or a bearer token",
                )
            who = max(admins, key=lambda i: i.role == "rw")
        if method not in READ_ONLY and who.role != "rw":
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"{who} may only read; {method} changes state"
            )
        return who


def refuse_log(method: str, context: grpc.aio.ServicerContext, e: Refused) -> None:
    log.warning(
        "auth_refused", method=method, peer=context.peer(), code=e.code.name, reason=e.message
    )


class AdminAuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every AdminService call against the guard before the servicer runs (the peer's
    certificate is only known inside the call, so the handler is wrapped, not refused here)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        full = details.method or ""
        if handler is None or not full.startswith(ADMIN_SERVICE):
            return handler
        method = full[len(ADMIN_SERVICE) :]
        guard = self.guard

        async def check(context: grpc.aio.ServicerContext) -> None:
            try:
                who = guard.admin(context, method)
            except Refused as e:
                refuse_log(method, context, e)
                await context.abort(e.code, e.message)
            else:
                if who is not None and method not in READ_ONLY:
                    log.info("admin_call", method=method, by=str(who))

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(context)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError(f"AdminService.{method}: a kind of call the guard does not wrap")
