"""``dnnscaler loadgen``: open-loop Poisson or closed-loop load against a loopback Triton.

Prints one JSON line per window (client-side latency percentiles, throughput, errors) and
a final summary line; ``--rates`` drives a staircase (one rate per ``--step-s``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "loadgen",
        help="drive load at a model on a loopback Triton and report client-side latency",
    )
    p.add_argument("--url", required=True, help="Triton gRPC address, e.g. 127.0.0.1:8001")
    p.add_argument("--model", required=True)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, help="open-loop Poisson arrivals per second")
    mode.add_argument("--rates", help="staircase: comma-separated rates, one per --step-s")
    mode.add_argument("--concurrency", type=int, help="closed loop: requests kept in flight")
    p.add_argument("--step-s", type=float, default=10.0, help="seconds per staircase step")
    p.add_argument("--duration-s", type=float, default=10.0, help="run time (not --rates)")
    p.add_argument("--window-s", type=float, default=1.0, help="report interval")
    p.add_argument("--batch", type=int, default=1, help="inputs per request")
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, default=None, help="also write all windows here")
    p.set_defaults(func=run)


async def _drive(args: argparse.Namespace) -> dict[str, Any]:
    from dnnscaler.loadgen.generator import LoadGen

    rates = [float(r) for r in args.rates.split(",")] if args.rates else None
    duration = len(rates) * args.step_s if rates else args.duration_s
    kwargs: dict[str, Any] = (
        {"concurrency": args.concurrency}
        if args.concurrency is not None
        else {"rate_rps": rates[0] if rates else args.rate}
    )
    windows: list[dict[str, Any]] = []
    async with LoadGen(
        args.url,
        args.model,
        batch=args.batch,
        seed=args.seed,
        max_requests=args.max_requests,
        max_duration_s=duration + 1.0,
        **kwargs,
    ) as gen:
        loop = asyncio.get_running_loop()
        t_end = loop.time() + duration
        step = 0
        t_step = loop.time() + args.step_s
        while loop.time() < t_end and not gen.done:
            await asyncio.sleep(min(args.window_s, max(0.0, t_end - loop.time())))
            w = gen.window().to_dict()
            w["target_rps"] = gen.rate_rps if args.concurrency is None else None
            windows.append(w)
            print(json.dumps(w), flush=True)
            if rates and loop.time() >= t_step and step + 1 < len(rates):
                step += 1
                t_step += args.step_s
                gen.set_rate(rates[step])
        summary = {"summary": gen.snapshot().to_dict(), "last_error": gen.last_error}
    print(json.dumps(summary), flush=True)
    return {"windows": windows, **summary}


def run(args: argparse.Namespace) -> int:
    from tritonclient.utils import InferenceServerException

    try:
        result = asyncio.run(_drive(args))
    except ValueError as exc:
        print(f"dnnscaler loadgen: {exc}", file=sys.stderr)
        return 2
    except InferenceServerException as exc:
        print(f"dnnscaler loadgen: {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=1))
    return 0 if result["summary"]["errors"] == 0 else 1
