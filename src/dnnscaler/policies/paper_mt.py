"""The published DNNScaler multi-tenancy scaler, as pure steps.

Batch size 1. The initial instance count is the largest ``k`` whose matrix-completion
estimate is under the SLO. After starting, it waits ``bias_step_s * k``; then, every
second, on the mean of the last ~100 latencies:

- inside ``[0.85 * SLO, SLO]``: hold;
- below ``0.85 * SLO`` (and room left): add one instance, wait ``5 s + bias``, then grow the
  bias by ``bias_step_s``;
- above the SLO: remove the newest instance, wait 5 s, then hold (hysteresis) while the
  latency stays within ``[0.95 * latency before the last add, latency that caused the
  removal]`` and the SLO is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

BAND_LOW = 0.85
ADD_WAIT_S = 5.0
REMOVE_WAIT_S = 5.0
LATENCY_SAMPLES = 100


@dataclass(frozen=True)
class MtLoop:
    """The MT scaler's memory."""

    instances: int = 1
    wait_until_s: float = 0.0
    bias_s: float = 0.0
    holding: bool = False
    latency_before_add_ms: float = 0.0
    latency_at_remove_ms: float = 0.0
    slo_at_remove_ms: float = 0.0
    # (completed, mean latency ms) of recent windows under the current knobs, newest last.
    recent: tuple[tuple[int, float], ...] = ()


def initial_instances(estimates_ms: Sequence[float], slo_ms: float, top: int) -> int:
    """Largest ``k`` (1-based, at most ``top``) whose estimated latency is under the SLO."""
    best = 1
    for k, lat in enumerate(estimates_ms, start=1):
        if k <= top and lat < slo_ms:
            best = k
    return best


def recent_mean(recent: Sequence[tuple[int, float]]) -> float | None:
    """Mean latency of (about) the last ``LATENCY_SAMPLES`` requests."""
    total, acc = 0, 0.0
    for count, mean in reversed(recent):
        take = min(count, LATENCY_SAMPLES - total)
        total += take
        acc += take * mean
        if total >= LATENCY_SAMPLES:
            break
    return acc / total if total else None


def remember(
    recent: tuple[tuple[int, float], ...], count: int, mean: float
) -> tuple[tuple[int, float], ...]:
    """``recent`` with one more window, keeping only what the last 100 latencies need."""
    out = (*recent, (count, mean))
    kept: list[tuple[int, float]] = []
    total = 0
    for item in reversed(out):
        kept.append(item)
        total += item[0]
        if total >= LATENCY_SAMPLES:
            break
    return tuple(reversed(kept))


def step(
    loop: MtLoop, now_s: float, latency_ms: float, slo_ms: float, top: int, bias_step_s: float
) -> tuple[MtLoop, str]:
    """One 1 s tick of the loop given the recent mean latency; returns the new loop state."""
    if now_s < loop.wait_until_s:
        return loop, f"waiting {loop.wait_until_s - now_s:.1f}s after a change"
    if loop.holding:
        within = loop.latency_before_add_ms * 0.95 <= latency_ms <= loop.latency_at_remove_ms
        if within and slo_ms == loop.slo_at_remove_ms:
            return loop, f"hysteresis hold at n={loop.instances} ({latency_ms:.1f}ms)"
        loop = replace(loop, holding=False)
    if BAND_LOW * slo_ms <= latency_ms <= slo_ms:
        return loop, f"mean {latency_ms:.1f}ms in band: hold n={loop.instances}"
    if latency_ms < BAND_LOW * slo_ms:
        if loop.instances >= top:
            return loop, f"mean {latency_ms:.1f}ms below band, at the instance limit {top}"
        return (
            replace(
                loop,
                instances=loop.instances + 1,
                wait_until_s=now_s + ADD_WAIT_S + loop.bias_s,
                bias_s=loop.bias_s + bias_step_s,
                latency_before_add_ms=latency_ms,
                recent=(),
            ),
            f"mean {latency_ms:.1f}ms below band: n {loop.instances}->{loop.instances + 1}",
        )
    if loop.instances <= 1:
        return loop, f"mean {latency_ms:.1f}ms over SLO at n=1: nothing to remove"
    return (
        replace(
            loop,
            instances=loop.instances - 1,
            wait_until_s=now_s + REMOVE_WAIT_S,
            holding=True,
            latency_at_remove_ms=latency_ms,
            slo_at_remove_ms=slo_ms,
            recent=(),
        ),
        f"mean {latency_ms:.1f}ms over SLO: n {loop.instances}->{loop.instances - 1}, hold",
    )
