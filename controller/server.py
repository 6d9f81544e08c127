"""The controller process: gRPC server (agent stream, admin API, health, reflection) and
its housekeeping task. Graceful stop: health NOT_SERVING, then ``server.stop(grace)``."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dnnscaler.controller.admin_service import AdminService
from dnnscaler.controller.agent_service import AgentService
from dnnscaler.controller.auth import AdminAuthInterceptor, Guard
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.metrics import ControllerMetrics
from dnnscaler.controller.registry import Registry
from dnnscaler.core.logging import get_logger
from dnnscaler.security.credentials import server_credentials
from dnnscaler.security.tokens import read_tokens
from dnnscaler.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc

log = get_logger(__name__)

SERVICE_NAMES = (
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
)


class _RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Binds a request id and the method into structlog's context for each call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=uuid.uuid4().hex[:12], method=handler_call_details.method
        )
        return await continuation(handler_call_details)


class Controller:
    """A running controller; use ``await start()`` / ``await stop()`` or ``async with``."""

    def __init__(self, config: ControllerConfig, *, trace_decisions: bool = False) -> None:
        """``trace_decisions``: keep every decision's observation in each model's loop
        (``ModelLoop.trace``), for benchmarks and tests to replay; unbounded, so not for a
        long-running fleet."""
        self.config = config
        self.registry = Registry(config)
        self.registry.trace_decisions = trace_decisions
        self.metrics = ControllerMetrics()
        self.guard = Guard(
            secure=bool(config.tls_cert),
            tokens=read_tokens(config.admin_tokens) if config.admin_tokens else {},
            agent_allow=frozenset(config.agent_allow),
        )
        self.agent_service = AgentService(self.registry, metrics=self.metrics, guard=self.guard)
        self.admin_service = AdminService(
            self.registry, on_forget=self.agent_service.forget_metrics
        )
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.port: int = 0
        self.admin_port: int = 0

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        cfg.check_transport()
        # Credentials first: a file that cannot be read is a configuration error (exit 2),
        # before anything binds.
        mtls, tls = (
            server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
            if cfg.tls_cert
            else (None, None)
        )
        server = grpc.aio.server(
            interceptors=[_RequestIdInterceptor(), AdminAuthInterceptor(self.guard)],
            options=[
                # Agents ping their stream (keepalive_s, down to 1 s in tests): never answer
                # a ping with "too many pings", and ping back to find agents that vanished.
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
            ],
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self.agent_service, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(self.admin_service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if cfg.reflection:
            reflection.enable_server_reflection(
                (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        self.port = self._bind(server, "listen", cfg.listen, mtls)
        if cfg.admin_listen:
            self.admin_port = self._bind(server, "admin_listen", cfg.admin_listen, tls)
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port, self.config.metrics_addr)
        self._reaper = asyncio.create_task(self._reap_forever())
        log.info(
            "controller_started",
            address=self.address,
            admin_address=self.admin_address or None,
            transport="mTLS" if cfg.tls_cert else "plaintext (loopback)",
            admin_tokens=len(self.guard.tokens),
            controller_id=self.agent_service.controller_id,
        )

    @staticmethod
    def _bind(
        server: grpc.aio.Server, name: str, address: str, creds: grpc.ServerCredentials | None
    ) -> int:
        port = (
            server.add_secure_port(address, creds)
            if creds is not None
            else server.add_insecure_port(address)
        )
        if port == 0:
            raise OSError(f"{name}: cannot bind {address}")
        return port

    @property
    def admin_address(self) -> str:
        host = self.config.admin_listen.rsplit(":", 1)[0]
        return f"{host}:{self.admin_port}" if self.admin_port else ""

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.config.stale_after_s / 3))
            try:
                self.agent_service.reap_stale()
            except Exception:
                log.exception("reaper_error")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        if self._server is not None:
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            await self._server.stop(self.config.grace_s)
            self._server = None
            log.info("controller_stopped")
        await self.agent_service.close()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def __aenter__(self) -> Controller:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()
