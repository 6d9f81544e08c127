"""What the ``dnnscaler`` policy measured at the configs it ran: floors, ceilings and the
tail-model calibration, per (batch size, instance count), under the current SLO."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from dnnscaler.core.types import Knobs

CLEAR_PASS = 0.9  # a window raises a config's floor only with its tail this far under the SLO
CEILING_RESET = 1.1  # a clear pass this far above a ceiling clears it (the ceiling was noise)
MAX_RECORDS = 32
TAIL_SAMPLES = 8  # steady windows' (load, tail) kept per config for same-load comparisons


@dataclass(frozen=True)
class ConfigRecord:
    """What was measured at one config under the current SLO (0.0 = nothing yet)."""

    max_batch_size: int
    instances: int
    floor_rps: float = 0.0
    ceiling_rps: float = 0.0
    updated_s: float = 0.0
    tail_log_ratio: float = 0.0  # decayed mean of log(measured tail / predicted tail)
    tail_weight: float = 0.0
    # The last steady windows under the SLO: (load rps, tail ms), oldest first.
    tails: tuple[tuple[float, float], ...] = ()
    # A config measured to serve the same load with a clearly better tail (see
    # ``same_load_tail``): the plan ranks this one below it while the record lives.
    beaten_by: tuple[int, int] | None = None


def update_records(
    records: tuple[ConfigRecord, ...],
    knobs: Knobs,
    load: float,
    over: bool,
    clear: bool,
    now_s: float,
    memory_s: float,
    tail_ms: float | None = None,
) -> tuple[ConfigRecord, ...]:
    """``records`` with this window's measurement at ``knobs`` folded in (it goes last).

    ``over``: the window broke the SLO at ``load``; ``clear``: it passed with margin;
    ``tail_ms``: the window's tail, kept if it was steady and under the SLO. Records older
    than ``memory_s`` are forgotten.
    """
    kept = [r for r in records if now_s - r.updated_s <= memory_s]
    key = (knobs.max_batch_size, knobs.instances)
    old = next((r for r in kept if (r.max_batch_size, r.instances) == key), None)
    rec = old or ConfigRecord(*key)
    if over:
        ceiling = load if rec.ceiling_rps <= 0 else min(rec.ceiling_rps, load)
        rec = replace(rec, ceiling_rps=ceiling, floor_rps=min(rec.floor_rps, 0.97 * ceiling))
    elif clear and load > rec.floor_rps:
        ceiling = rec.ceiling_rps
        if ceiling > 0 and load >= CEILING_RESET * ceiling:
            ceiling = 0.0
        floor = load if ceiling <= 0 else min(load, 0.97 * ceiling)
        rec = replace(rec, floor_rps=floor, ceiling_rps=ceiling)
    if tail_ms is not None and not over:
        rec = replace(rec, tails=(*rec.tails[-(TAIL_SAMPLES - 1) :], (load, tail_ms)))
    rec = replace(rec, updated_s=now_s)
    others = [r for r in kept if (r.max_batch_size, r.instances) != key]
    return (*others[-(MAX_RECORDS - 1) :], rec)


def same_load_tail(rec: ConfigRecord, load: float, tolerance: float, least: int) -> float | None:
    """The median tail ``rec`` measured at loads within ``tolerance`` (a share) of ``load``,
    from at least ``least`` windows; None if it has fewer."""
    near = [t for x, t in rec.tails if abs(x - load) <= tolerance * load]
    return statistics.median(near) if len(near) >= max(1, least) else None


def headroom_rps(
    rec: ConfigRecord, load: float, bound_ms: float, tail_ms: float, root: float, most: float
) -> float:
    """What a config serving ``load`` with a steady tail of ``tail_ms`` is credited to carry
    under a tail bound of ``bound_ms``: ``load`` times the ``root``-th root of the tail's
    headroom, at most ``most`` times ``load`` and 0.97 of a ceiling measured.

    A floor is only the load served: while the load stays under a config's capacity, a
    config in force that passes with room to spare cannot show more, and a forecast for one
    never run wins against it by default. The credit is a lower-bound guess, not a model:
    see ``DnnScalerPolicy._planned_move`` for where it counts and the measurements behind
    its root and cap.
    """
    if load <= 0 or tail_ms <= 0 or bound_ms <= tail_ms:
        return 0.0
    credit = load * min(most, (bound_ms / tail_ms) ** (1.0 / root))
    return min(credit, 0.97 * rec.ceiling_rps) if rec.ceiling_rps > 0 else credit


def contention_calibration(records: tuple[ConfigRecord, ...], n_max: int) -> tuple[float, ...]:
    """Tail-model log-ratio per instance count 1..n_max.

    Measured counts use the weighted mean of their configs' ratios. An unmeasured count
    inherits the largest ratio measured at a smaller count (the model's contention error
    grows with the count), or none.
    """
    out: list[float] = []
    worst = 0.0
    for n in range(1, n_max + 1):
        same = [r for r in records if r.instances == n and r.tail_weight > 0]
        weight = sum(r.tail_weight for r in same)
        if weight > 0:
            ratio = sum(r.tail_weight * r.tail_log_ratio for r in same) / weight
            worst = max(worst, ratio)
            out.append(ratio)
        else:
            out.append(worst)
    return tuple(out)


def rescale_records(records: tuple[ConfigRecord, ...], factor: float) -> tuple[ConfigRecord, ...]:
    """Floors and ceilings times ``factor``: the device's speed changed (a co-located model
    came or went) and a config's capacity scales with it, roughly inversely to its compute
    time. Old floors would otherwise promise capacity that is gone."""
    return tuple(
        replace(r, floor_rps=r.floor_rps * factor, ceiling_rps=r.ceiling_rps * factor)
        for r in records
    )
