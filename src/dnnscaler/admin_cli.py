"""Admin verbs of the `dnnscaler` CLI: talk to the controller's AdminService.

Exit codes: 0 ok, 2 invalid argument, 3 not found, 4 controller unreachable, 5 refused
(no or unknown credentials, or a role that may not make the call), 1 other error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.table import Table

from dnnscaler.core.types import SLO_LATENCY
from dnnscaler.security.credentials import check_pair, secure_channel
from dnnscaler.security.tokens import read_token_file
from dnnscaler.v1 import admin_pb2, admin_pb2_grpc, common_pb2

EXIT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.FAILED_PRECONDITION: 2,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.UNAVAILABLE: 4,
    grpc.StatusCode.DEADLINE_EXCEEDED: 4,
    grpc.StatusCode.UNAUTHENTICATED: 5,
    grpc.StatusCode.PERMISSION_DENIED: 5,
}


def register(sub: argparse._SubParsersAction) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--controller", default="127.0.0.1:50051", help="controller HOST:PORT")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.add_argument("--timeout-s", type=float, default=5.0)
        sec = p.add_argument_group(
            "credentials",
            "TLS and the operator's identity (unset: plaintext, loopback only). Each also"
            " reads DNNSCALER_ADMIN_<NAME>, e.g. DNNSCALER_ADMIN_TOKEN_FILE.",
        )
        for flag, what in (
            ("ca", "the CA that signed the controller's certificate"),
            ("cert", "an operator certificate (`dnnscaler certs --admin NAME:ROLE`)"),
            ("key", "its private key"),
            ("token-file", "a file holding a bearer token (the controller's admin_listen)"),
            ("server-name", "verify the controller's certificate against this name"),
        ):
            env = "DNNSCALER_ADMIN_" + flag.upper().replace("-", "_")
            sec.add_argument(f"--{flag}", default=os.environ.get(env, ""), help=f"{what} [{env}]")

    p = sub.add_parser("status", help="agents and models known to the controller")
    common(p)
    p.set_defaults(func=lambda a: _run(a, _status))

    p = sub.add_parser("models", help="list models with SLO, approach, knobs and latest figures")
    common(p)
    p.add_argument("model", nargs="?", default="")
    p.set_defaults(func=lambda a: _run(a, _models))

    p = sub.add_parser("model", help="show one model")
    common(p)
    p.add_argument("model")
    p.add_argument("--agent", default="")
    p.set_defaults(func=lambda a: _run(a, _model))

    p = sub.add_parser(
        "set-slo",
        help="set a model's latency SLO fleet-wide (server-side latency)",
        description=f"Set a model's latency SLO fleet-wide. {SLO_LATENCY}.",
    )
    common(p)
    p.add_argument("model")
    p.add_argument("--latency-ms", type=float, required=True)
    p.add_argument("--percentile", type=float, default=99.0)
    p.set_defaults(func=lambda a: _run(a, _set_slo))

    p = sub.add_parser("set-policy", help="choose a model's policy (static pins knobs)")
    common(p)
    p.add_argument("model")
    p.add_argument("policy")
    p.add_argument("--max-batch-size", type=int)
    p.add_argument("--instances", type=int)
    p.add_argument("--queue-delay-us", type=int, default=0)
    p.set_defaults(func=lambda a: _run(a, _set_policy))

    p = sub.add_parser("clear-slo", help="put a model back on the controller's default SLO")
    common(p)
    p.add_argument("model")
    p.set_defaults(func=lambda a: _run(a, _clear_slo))

    for verb, what in (("pause", "stop"), ("resume", "restart")):
        p = sub.add_parser(
            verb,
            help=f"{what} changing the knobs of a model (every agent's) or of an agent's"
            " models; serving goes on",
        )
        common(p)
        target = p.add_mutually_exclusive_group(required=True)
        target.add_argument("model", nargs="?", default="")
        target.add_argument("--agent", default="")
        p.set_defaults(func=lambda a, verb=verb: _run(a, _pause if verb == "pause" else _resume))

    p = sub.add_parser("drain", help="stop changing knobs on an agent for maintenance")
    common(p)
    p.add_argument("agent")
    p.set_defaults(func=lambda a: _run(a, _drain))

    p = sub.add_parser("reprofile", help="forget what the policy learned about a model")
    common(p)
    p.add_argument("model")
    p.set_defaults(func=lambda a: _run(a, _reprofile))

    p = sub.add_parser(
        "forget-agent",
        help="drop an agent that is not connected (lost or gone): its record, its models'"
        " loops and stored state; the history stays",
    )
    common(p)
    p.add_argument("agent")
    p.set_defaults(func=lambda a: _run(a, _forget_agent))

    p = sub.add_parser("history", help="a model's knob decisions, oldest first")
    common(p)
    p.add_argument("model")
    p.add_argument("--since", type=since_arg, help="an age (30s, 10m, 2h, 1d) or an ISO 8601 time")
    p.add_argument("--limit", type=int, default=50, help="the newest this many (max 10000)")
    p.set_defaults(func=lambda a: _run(a, _history))

    p = sub.add_parser(
        "watch",
        help="follow decisions, applies, agents and SLO violations as they happen (Ctrl-C ends)",
    )
    common(p)
    p.add_argument("--model", default="", help="only this model's events")
    p.add_argument("--agent", default="", help="only this agent's events")
    p.set_defaults(func=watch)


def event_line(e: admin_pb2.Event) -> str:
    """One event as a log line: time, kind, where, what changed, why."""
    where = "/".join(x for x in (e.agent_id, e.model) if x) or "-"
    knobs = ""
    if e.HasField("new_knobs"):
        new = f"b{e.new_knobs.max_batch_size}/n{e.new_knobs.instances}"
        if e.HasField("old_knobs"):
            old = f"b{e.old_knobs.max_batch_size}/n{e.old_knobs.instances}"
            knobs = f" {old} → {new}"
        else:
            knobs = f" {new}"
    when = datetime.fromtimestamp(e.time).isoformat(timespec="seconds")
    return f"{when} {e.kind:<18} {where}{knobs}: {e.message}"


def watch(a: argparse.Namespace) -> int:
    """Print events until Ctrl-C or SIGTERM (exit 0) or until the controller goes (exit 4).

    The signals cancel the call from the event loop: a KeyboardInterrupt raised wherever
    the main thread happens to be (inside grpc's own code, say) could not end as cleanly.
    """

    async def follow() -> bool:
        """True: stopped by a signal."""
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        async with channel(a) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            call = stub.Watch(admin_pb2.WatchRequest(model=a.model, agent_id=a.agent))

            def stop() -> None:
                stopped.set()
                call.cancel()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            try:
                async for e in call:
                    if a.json:
                        doc = MessageToDict(e, preserving_proto_field_name=True)
                        print(json.dumps(doc), flush=True)
                    else:
                        print(event_line(e), flush=True)
            except asyncio.CancelledError:
                if not stopped.is_set():
                    raise
            except grpc.aio.AioRpcError as e:
                if not (stopped.is_set() and e.code() == grpc.StatusCode.CANCELLED):
                    raise
        return stopped.is_set()

    try:
        if asyncio.run(follow()):
            return 0
    except grpc.aio.AioRpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return EXIT_CODES.get(e.code(), 1)
    print("error: the controller ended the stream", file=sys.stderr)
    return 4


def since_arg(text: str) -> float:
    """Unix seconds from an age (``30s``, ``10m``, ``2h``, ``1d``) or an ISO 8601 time."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    if text and text[-1] in units:
        try:
            age = float(text[:-1]) * units[text[-1]]
        except ValueError:
            age = -1.0
        if age >= 0 and math.isfinite(age):
            return time.time() - age
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an age like 10m or an ISO 8601 time, got {text[:40]!r}"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a time without a zone is local time
    return when.timestamp()


def channel(a: argparse.Namespace) -> grpc.aio.Channel:
    """The admin channel the flags describe (plaintext without --ca: loopback only)."""
    token = read_token_file(a.token_file) if a.token_file else ""
    cert, key = a.cert, a.key
    check_pair("", cert, key)
    return secure_channel(a.controller, a.ca, cert, key, a.server_name, token)


def _run(args: argparse.Namespace, fn: Callable[[Any, argparse.Namespace], Awaitable[Any]]) -> int:
    async def go() -> Any:
        async with channel(args) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            return await fn(stub, args)

    try:
        result = asyncio.run(go())
    except grpc.aio.AioRpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return EXIT_CODES.get(e.code(), 1)
    if args.json:
        if isinstance(result, _Status):
            doc = {
                "agents": MessageToDict(result.agents, preserving_proto_field_name=True).get(
                    "agents", []
                ),
                "models": MessageToDict(result.models, preserving_proto_field_name=True).get(
                    "models", []
                ),
                "slo_latency": SLO_LATENCY,
            }
        else:
            doc = MessageToDict(result, preserving_proto_field_name=True)
        print(json.dumps(doc, indent=2))
    else:
        _print(result)
    return 0


async def _status(stub: Any, a: argparse.Namespace) -> Any:
    agents = await stub.ListAgents(admin_pb2.ListAgentsRequest(), timeout=a.timeout_s)
    models = await stub.ListModels(admin_pb2.ListModelsRequest(), timeout=a.timeout_s)
    return _Status(agents, models)


async def _models(stub: Any, a: argparse.Namespace) -> Any:
    return await stub.ListModels(admin_pb2.ListModelsRequest(model=a.model), timeout=a.timeout_s)


async def _model(stub: Any, a: argparse.Namespace) -> Any:
    return await stub.GetModel(
        admin_pb2.GetModelRequest(model=a.model, agent_id=a.agent), timeout=a.timeout_s
    )


async def _set_slo(stub: Any, a: argparse.Namespace) -> Any:
    req = admin_pb2.SetSloRequest(
        model=a.model, slo=common_pb2.Slo(latency_ms=a.latency_ms, percentile=a.percentile)
    )
    return await stub.SetSlo(req, timeout=a.timeout_s)


async def _set_policy(stub: Any, a: argparse.Namespace) -> Any:
    req = admin_pb2.SetPolicyRequest(model=a.model, policy=a.policy)
    if a.max_batch_size is not None or a.instances is not None:
        req.knobs.CopyFrom(
            common_pb2.Knobs(
                max_batch_size=a.max_batch_size or 1,
                instances=a.instances or 1,
                queue_delay_us=a.queue_delay_us,
            )
        )
    return await stub.SetPolicy(req, timeout=a.timeout_s)


async def _clear_slo(stub: Any, a: argparse.Namespace) -> Any:
    return await stub.ClearSlo(admin_pb2.ClearSloRequest(model=a.model), timeout=a.timeout_s)


async def _pause(stub: Any, a: argparse.Namespace) -> Any:
    req = admin_pb2.PauseRequest(model=a.model, agent_id=a.agent)
    return await stub.Pause(req, timeout=a.timeout_s)


async def _resume(stub: Any, a: argparse.Namespace) -> Any:
    req = admin_pb2.PauseRequest(model=a.model, agent_id=a.agent)
    return await stub.Resume(req, timeout=a.timeout_s)


async def _drain(stub: Any, a: argparse.Namespace) -> Any:
    return await stub.Drain(admin_pb2.DrainRequest(agent_id=a.agent), timeout=a.timeout_s)


async def _reprofile(stub: Any, a: argparse.Namespace) -> Any:
    return await stub.Reprofile(admin_pb2.ReprofileRequest(model=a.model), timeout=a.timeout_s)


async def _forget_agent(stub: Any, a: argparse.Namespace) -> Any:
    req = admin_pb2.ForgetAgentRequest(agent_id=a.agent)
    return await stub.ForgetAgent(req, timeout=a.timeout_s)


async def _history(stub: Any, a: argparse.Namespace) -> Any:
    req = admin_pb2.HistoryRequest(model=a.model, limit=max(0, a.limit))
    if a.since is not None:
        req.since = a.since
    return await stub.History(req, timeout=a.timeout_s)


class _Status:
    """Both listings, printable as tables or as one JSON document."""

    def __init__(self, agents: admin_pb2.ListAgentsResponse, models: admin_pb2.ListModelsResponse):
        self.agents = agents
        self.models = models


def _fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.1f}{unit}"


def model_rows(models: list[admin_pb2.ModelStatus]) -> Table:
    t = Table(title="models", caption=SLO_LATENCY, caption_justify="left")
    for col in (
        "agent",
        "model",
        "SLO",
        "policy",
        "approach",
        "batch",
        "inst",
        "delay µs",
        "tput rps",
        "p-lat ms",
        "gen",
        "changes",
        "note",
    ):
        t.add_column(col)
    for m in models:
        w = m.last_window
        pct = m.slo.percentile
        lat = None
        if m.HasField("last_window"):
            if pct <= 50 and w.HasField("latency_p50_ms"):
                lat = w.latency_p50_ms
            elif pct <= 95 and w.HasField("latency_p95_ms"):
                lat = w.latency_p95_ms
            elif w.HasField("latency_p99_ms"):
                lat = w.latency_p99_ms
        pend = ""
        if m.HasField("pending_knobs"):
            pend = f"→ b{m.pending_knobs.max_batch_size}/n{m.pending_knobs.instances}"
        t.add_row(
            m.agent_id,
            m.model,
            f"p{pct:g}≤{m.slo.latency_ms:g}ms",
            m.policy,
            m.approach,
            str(m.knobs.max_batch_size),
            str(m.knobs.instances),
            str(m.knobs.queue_delay_us),
            _fmt(w.throughput_rps if m.HasField("last_window") else None),
            _fmt(lat),
            str(m.generation),
            str(m.knob_changes),
            " ".join(
                x
                for x in (
                    f"held: {m.hold}" if m.hold else "",
                    pend,
                    m.last_error if not m.available or m.last_error else "",
                )
                if x
            ),
        )
    return t


def agent_rows(agents: list[admin_pb2.AgentStatus]) -> Table:
    t = Table(title="agents")
    for col in (
        "agent",
        "node",
        "gpu",
        "backend",
        "connected",
        "backend ok",
        "last report s",
        "util %",
        "mem MB",
        "models",
        "knobs",
    ):
        t.add_column(col)
    for a in agents:
        tel = a.telemetry
        t.add_row(
            a.agent_id,
            a.node,
            f"{a.gpu.index} {a.gpu.name}".strip(),
            a.backend_kind,
            "yes" if a.connected else "lost" if a.lost else "no",
            "yes" if a.backend_available else f"no: {a.backend_message}",
            f"{a.last_report_age_s:.1f}",
            _fmt(tel.utilization_pct if tel.HasField("utilization_pct") else None),
            _fmt(tel.memory_used_mb if tel.HasField("memory_used_mb") else None),
            ",".join(a.models),
            "draining" if a.draining else "paused" if a.paused else "policy",
        )
    return t


def history_rows(decisions: list[admin_pb2.DecisionEntry]) -> Table:
    t = Table(title="decisions")
    for col in ("time", "agent", "model", "knobs", "approach", "cause", "reason"):
        t.add_column(col)
    for d in decisions:
        old, new = d.old_knobs, d.new_knobs
        t.add_row(
            datetime.fromtimestamp(d.time).isoformat(timespec="seconds"),
            d.agent_id,
            d.model,
            f"b{old.max_batch_size}/n{old.instances} → b{new.max_batch_size}/n{new.instances}",
            d.approach,
            d.cause,
            d.reason,
        )
    return t


def _print(result: Any) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # pipes and logs: do not squeeze the tables to 80 columns
    if isinstance(result, _Status):
        console.print(agent_rows(list(result.agents.agents)))
        console.print(model_rows(list(result.models.models)))
    elif isinstance(result, admin_pb2.PauseResponse):
        if result.agents:
            console.print(agent_rows(list(result.agents)))
        console.print(model_rows(list(result.models)))
    elif isinstance(result, admin_pb2.HistoryResponse):
        console.print(history_rows(list(result.decisions)))
    elif isinstance(
        result,
        (admin_pb2.ListModelsResponse, admin_pb2.SetSloResponse, admin_pb2.SetPolicyResponse),
    ):
        console.print(model_rows(list(result.models)))
    elif isinstance(result, admin_pb2.ModelStatus):
        console.print(model_rows([result]))
    elif isinstance(result, admin_pb2.ForgetAgentResponse):
        models = ", ".join(result.models) or "no model"
        console.print(f"forgot agent {result.agent_id} ({models})")
    else:
        console.print(str(result))
