"""Capacity under the SLO, measured from the client: of one config (bisection on the
open-loop rate), of every config of a grid (the oracle sweep), and of two configs on one
shared rising ladder of rates (``side_by_side``).

These are the oracle's figures that the online policies are judged against.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dnnscaler.agents.backend import ModelInfo
from dnnscaler.bench.adapter import H, ServerAdapter
from dnnscaler.bench.config import BenchConfig
from dnnscaler.bench.probes import (
    apply_settled,
    closed_loop_throughput,
    model_info,
    open_loop_probe,
)
from dnnscaler.core.logging import get_logger
from dnnscaler.core.types import Knobs, Slo

log = get_logger(__name__)


@dataclass(frozen=True)
class Probe:
    knobs: Knobs
    rate_rps: float
    latency_ms: float | None
    passed: bool
    errors: int


@dataclass
class ConfigCapacity:
    knobs: Knobs
    capacity_rps: float
    probes: list[Probe] = field(default_factory=list)
    # Not bisected (``capacity_rps`` 0): its throughput ceiling was under a capacity the
    # sweep had already measured, so it could not be the best config.
    pruned: bool = False


async def measure_capacity(
    adapter: ServerAdapter[H],
    server: H,
    model: str,
    knobs: Knobs,
    slo: Slo,
    cfg: BenchConfig,
    beat_rps: float = 0.0,
) -> ConfigCapacity:
    """Highest open-loop rate at which the p-th percentile stays within the SLO.

    The bisection never probes above 1.05 x the closed-loop throughput, so a config whose
    bound is at most ``beat_rps`` cannot exceed it: it is returned ``pruned``, unprobed.
    """
    await apply_settled(server, model, knobs)
    conc = max(2, 2 * knobs.instances * knobs.max_batch_size)
    ceiling = await closed_loop_throughput(adapter, server, model, conc, 2.0)
    out = ConfigCapacity(knobs, 0.0)
    lo, hi = 0.0, max(1.0, ceiling * 1.05)
    if hi <= beat_rps:
        out.pruned = True
        log.info("config_pruned", model=model, knobs=str(knobs), bound_rps=round(hi, 1))
        return out
    for i in range(cfg.bisect_iters):
        rate = hi if i == 0 else (lo + hi) / 2
        lat, errors, _ = await open_loop_probe(adapter, server, model, rate, slo, cfg, cfg.seed + i)
        ok = lat is not None and lat <= slo.latency_ms and errors == 0
        out.probes.append(Probe(knobs, round(rate, 2), lat, ok, errors))
        if ok:
            lo = rate
            if i == 0:
                break
        else:
            hi = rate
    out.capacity_rps = lo
    log.info("config_capacity", model=model, knobs=str(knobs), capacity_rps=round(lo, 1))
    return out


def grid(cfg: BenchConfig, info: ModelInfo) -> list[Knobs]:
    bs = sorted({b for b in cfg.batch_grid if b <= info.limits.max_batch_size})
    ns = sorted({n for n in cfg.instance_grid if n <= info.limits.max_instances})
    # Queue delay 0, as every policy here runs and as the sim's oracle: with instances busy,
    # batches form from what queued meanwhile. (A 2 ms delay gained nothing on these models
    # and a reload with one set preceded a Triton 2.51 SIGSEGV under load.)
    return [Knobs(b, n, 0) for b in bs for n in ns]


# Makes a config available to measure and names the model that serves it: a copy of the
# model loaded at those knobs (``TritonServer.copy_for``), instead of a reload of the model.
Place = Callable[[Knobs], Awaitable[str]]


async def oracle_sweep(
    adapter: ServerAdapter[H],
    server: H,
    model: str,
    slo: Slo,
    cfg: BenchConfig,
    progress: Callable[[str], None] = lambda s: None,
    prune: bool = False,
    place: Place | None = None,
) -> list[ConfigCapacity]:
    """Every grid config's capacity. With ``prune``, only the best one is sure to be
    measured: configs go from the most parallel (batch x instances) down and one whose
    throughput bound is under the best capacity so far is not bisected (same argmax, about
    half the probes when the best comes early). With ``place``, each config is measured on
    the model ``place`` names for it, and ``model`` is not reloaded."""
    info = await model_info(server.setup, model)
    out: list[ConfigCapacity] = []
    configs = grid(cfg, info)
    if prune:
        configs.sort(key=lambda k: (-k.max_batch_size * k.instances, -k.max_batch_size))
    async with adapter.quiet_probe(server):
        for k in configs:
            progress(f"{model}: oracle b{k.max_batch_size} n{k.instances}")
            best = max((c.capacity_rps for c in out), default=0.0) if prune else 0.0
            name = model if place is None else await place(k)
            out.append(await measure_capacity(adapter, server, name, k, slo, cfg, best))
    return out


async def side_by_side(
    adapter: ServerAdapter[H],
    server: H,
    model: str,
    a: Knobs,
    b: Knobs,
    slo: Slo,
    start_rps: float,
    step_frac: float = 0.075,
    probe_s: float = 3.0,
    max_steps: int = 16,
    max_rps: float | None = None,
    verdict_ratio: float | None = None,
    model_b: str | None = None,
) -> tuple[float, float, list[dict[str, Any]]]:
    """Capacities of configs ``a`` and ``b`` measured alternately on one rising rate ladder,
    so both see the same rates and the same background noise (in the order a b, b a, a b,
    ... so that half the probes need no reload). Each config's capacity is the highest rate
    it passed before failing twice in a row.

    With ``verdict_ratio``, the ladder stops as soon as whether ``a >= verdict_ratio * b``
    is decided: the capacity still climbing is then a lower bound. A ladder that starts
    above ``a``'s capacity cannot decide that by climbing (12-06 CI run 17: b4 n2 failed
    the first two rungs, 0.95 and 1.0 x b8 n4's 1,501 rps, and read 0, though 0.7 x was
    never probed): then ``a`` and ``b`` are probed once more at ``verdict_ratio * b``
    (rows marked ``"floor": True``), and ``a``'s capacity is that rate if it passes.

    With ``model_b``, a copy of ``model`` loaded beside it (``TritonServer.load_copy``),
    ``b`` is probed on that copy: each config is applied once, before the first rung, and
    no probe follows a reload."""
    cfg = replace(BenchConfig(), probe_s=probe_s, warm_s=1.0)
    caps = {"a": 0.0, "b": 0.0}
    fails = {"a": 0, "b": 0}
    # The rate of a's first failure since its last pass: its capacity lies below it.
    a_failed_at: float | None = None
    log_rows: list[dict[str, Any]] = []
    names = {"a": model, "b": model_b or model}
    in_force: dict[str, Knobs] = {}  # per model name
    last = "a"  # the config probed last: the next rung starts with it

    async def probe(key: str, knobs: Knobs, rate: float, seed: int, **mark: bool) -> bool:
        nonlocal last
        name = names[key]
        if in_force.get(name) != knobs:
            await apply_settled(server, name, knobs)
            in_force[name] = knobs
        last = key
        lat, errors, _ = await open_loop_probe(adapter, server, name, rate, slo, cfg, seed)
        ok = lat is not None and lat <= slo.latency_ms and errors == 0
        row = {"config": key, "rate_rps": round(rate, 1), "latency_ms": lat, "errors": errors}
        log_rows.append({**row, "ok": ok, **mark})
        return ok

    async with adapter.quiet_probe(server):
        for i in range(max_steps):
            rate = start_rps * (1 + step_frac) ** i
            if max_rps is not None and rate > max_rps:
                break
            # a, b on even rungs and b, a on odd ones: each rung starts with the config the
            # last one ended on, so a reload is needed every other probe, not every probe.
            order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
            for key, knobs in order:
                if fails[key] >= 2:
                    continue
                ok = await probe(key, knobs, rate, i)
                if ok:
                    caps[key] = max(caps[key], rate)
                    fails[key] = 0
                else:
                    fails[key] += 1
                if key == "a":
                    a_failed_at = None if ok else (a_failed_at or rate)
            if fails["a"] >= 2 and fails["b"] >= 2:
                break
            if verdict_ratio is not None and (
                (fails["b"] >= 2 and caps["a"] >= verdict_ratio * caps["b"])
                # a's capacity is under the rate it first failed at, and b's over its own:
                # decided only once that rate is at or under the bar.
                or (
                    fails["a"] >= 2
                    and a_failed_at is not None
                    and a_failed_at <= verdict_ratio * caps["b"]
                )
            ):
                break
        # A hair above the bar, so that a pass reads >= verdict_ratio in floating point.
        floor = verdict_ratio * caps["b"] * (1 + 1e-6) if verdict_ratio is not None else 0.0
        if (
            floor > caps["a"]
            and fails["a"] >= 2
            and a_failed_at is not None
            and a_failed_at > floor
        ):
            # Undecided: a's capacity lies in [caps a, a_failed_at), across the bar.
            for key, knobs in (("b", b), ("a", a)) if last == "b" else (("a", a), ("b", b)):
                if await probe(key, knobs, floor, max_steps, floor=True) and key == "a":
                    caps["a"] = floor
    return caps["a"], caps["b"], log_rows
