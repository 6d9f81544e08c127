"""`dnnscaler agent`: run one per-GPU agent against a sim or a real Triton backend."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket

from dnnscaler.agents.agent import Agent
from dnnscaler.agents.backend import Backend
from dnnscaler.agents.config import AgentConfig
from dnnscaler.core.types import InvalidValue


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agent", help="run a per-GPU agent")
    p.add_argument("--controller", default="127.0.0.1:50051", help="controller HOST:PORT")
    p.add_argument("--agent-id", default="", help="default: NODE-gpuINDEX")
    p.add_argument("--node", default=socket.gethostname())
    p.add_argument("--gpu-index", type=int, default=0)
    p.add_argument("--backend", choices=("sim", "triton"), default="sim")
    p.add_argument(
        "--sim-model",
        action="append",
        default=[],
        metavar="NAME=PROFILE@RPS",
        help="sim backend: serve PROFILE (see `dnnscaler bench sim --list`) as NAME under a "
        "Poisson load of RPS requests/s; repeatable",
    )
    p.add_argument("--sim-profiles", default=None, help="sim backend: a user profile file (JSON)")
    p.add_argument("--sim-seed", type=int, default=0)
    p.add_argument("--triton-grpc", default="127.0.0.1:8001", help="triton backend: gRPC HOST:PORT")
    p.add_argument("--triton-metrics", default=None, help="triton backend: metrics URL")
    p.set_defaults(func=run)


def parse_sim_model(spec: str) -> tuple[str, str, float]:
    """``NAME=PROFILE@RPS`` → (name, profile, rps); errors name the option."""
    try:
        name, rest = spec.split("=", 1)
        profile, rps = rest.rsplit("@", 1)
        rate = float(rps)
    except ValueError:
        raise InvalidValue("--sim-model", f"expected NAME=PROFILE@RPS, got {spec!r}") from None
    if not name or not profile or rate < 0:
        raise InvalidValue("--sim-model", f"expected NAME=PROFILE@RPS with RPS >= 0, got {spec!r}")
    return name, profile, rate


def build_backend(args: argparse.Namespace) -> Backend:
    if args.backend == "triton":
        from dnnscaler.agents.backends.triton import TritonBackend

        return TritonBackend(args.triton_grpc, metrics_url=args.triton_metrics)
    from dnnscaler.agents.backends.sim import SimBackend, SimModelSpec
    from dnnscaler.core.types import Knobs
    from dnnscaler.sim.profile import load_profiles, shipped_profiles

    profiles = dict(shipped_profiles())
    if args.sim_profiles:
        profiles.update(load_profiles(args.sim_profiles))
    specs = {}
    for spec in args.sim_model or ["demo=imagenet/Mob-V1-025@200"]:
        name, prof, rate = parse_sim_model(spec)
        if prof not in profiles:
            raise InvalidValue(
                "--sim-model", f"unknown profile {prof!r}; valid: {', '.join(sorted(profiles))}"
            )
        specs[name] = SimModelSpec(profile=profiles[prof], knobs=Knobs(), rate_rps=rate)
    return SimBackend(specs, seed=args.sim_seed)


async def serve(config: AgentConfig, backend: Backend) -> None:
    agent = Agent(config, backend)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stop)
    try:
        await agent.run()
    finally:
        await backend.close()


def run(args: argparse.Namespace) -> int:
    config = AgentConfig(
        controller=args.controller, agent_id=args.agent_id, node=args.node, gpu_index=args.gpu_index
    )
    asyncio.run(serve(config, build_backend(args)))
    return 0
