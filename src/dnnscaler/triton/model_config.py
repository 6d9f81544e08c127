"""Pure translation between Triton model configs (JSON dicts) and dnnscaler knobs/limits.

Triton's ``load_model(config=...)`` *replaces* the whole config, so knobs are applied by
editing a copy of the config read from the server and sending all of it back.

A model declares what it can take in its config ``parameters`` (string values):

- ``dnnscaler.max_batch_size`` — largest ``max_batch_size`` the model accepts
  (default: the ``max_batch_size`` of the config first seen);
- ``dnnscaler.max_instances`` — most co-located instances (default 10);
- ``dnnscaler.max_queue_delay_us`` — largest batcher delay (default 100 000);
- ``dnnscaler.instance_memory_mb`` — memory one instance holds (default unknown).
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dnnscaler.core.types import KnobLimits, Knobs

PARAM_MAX_BATCH = "dnnscaler.max_batch_size"
PARAM_MAX_INSTANCES = "dnnscaler.max_instances"
PARAM_MAX_DELAY = "dnnscaler.max_queue_delay_us"
PARAM_INSTANCE_MB = "dnnscaler.instance_memory_mb"

Config = dict[str, Any]


class ChangeKind(enum.Enum):
    """How Triton will carry out a change (it decides reload vs in-place from the diff)."""

    NONE = "none"
    INSTANCES_UP = "instances-up"  # in place, 0.1-0.3 s
    INSTANCES_DOWN = "instances-down"  # in place, but blocks while the model is busy
    RELOAD = "reload"  # any other field: full reload beside the old instances


@dataclass(frozen=True)
class Declared:
    """What a model declares about itself, independent of the knobs in force."""

    limits: KnobLimits
    instance_memory_mb: float | None


def _param(cfg: Mapping[str, Any], key: str) -> str | None:
    params = cfg.get("parameters") or {}
    entry = params.get(key)
    if isinstance(entry, Mapping):
        value = entry.get("string_value")
        return str(value) if value not in (None, "") else None
    return None


def _int_param(cfg: Mapping[str, Any], key: str) -> int | None:
    raw = _param(cfg, key)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def instance_count(cfg: Mapping[str, Any]) -> int:
    """Total instances over all instance groups (Triton's default is one group of 1)."""
    groups = cfg.get("instance_group") or []
    if not groups:
        return 1
    return sum(int(g.get("count", 1)) for g in groups)


def runs_on_cpu(cfg: Mapping[str, Any]) -> bool:
    """Whether every instance group of a (server-resolved) config runs on the CPU."""
    groups = cfg.get("instance_group") or []
    return bool(groups) and all(g.get("kind") == "KIND_CPU" for g in groups)


def knobs_from_config(cfg: Mapping[str, Any]) -> Knobs:
    """The knobs a config puts in force. A non-batching model (max_batch_size 0) reads as 1."""
    batching = cfg.get("dynamic_batching") or {}
    return Knobs(
        max_batch_size=max(1, int(cfg.get("max_batch_size", 0))),
        instances=instance_count(cfg),
        queue_delay_us=int(batching.get("max_queue_delay_microseconds", 0)),
    )


def declared_from_config(
    cfg: Mapping[str, Any],
    default_max_instances: int = 10,
    default_max_delay_us: int = 100_000,
    default_max_batch: int | None = None,
) -> Declared:
    """The limits a model declares in its parameters (see the module docstring).

    Without a declared batch limit, ``default_max_batch`` (the max_batch_size first seen,
    before any knob change) or else the config's own max_batch_size is the limit.
    """
    batching_capable = int(cfg.get("max_batch_size", 0)) > 0
    max_batch = (
        _int_param(cfg, PARAM_MAX_BATCH)
        or default_max_batch
        or max(1, int(cfg.get("max_batch_size", 0)))
    )
    if not batching_capable:
        max_batch = 1
    max_inst = _int_param(cfg, PARAM_MAX_INSTANCES) or default_max_instances
    max_delay = _int_param(cfg, PARAM_MAX_DELAY)
    if max_delay is None:
        max_delay = default_max_delay_us
    mem_raw = _param(cfg, PARAM_INSTANCE_MB)
    try:
        mem = float(mem_raw) if mem_raw is not None else None
    except ValueError:
        mem = None
    return Declared(
        limits=KnobLimits(
            max_batch_size=max(1, max_batch),
            max_instances=max(1, max_inst),
            max_queue_delay_us=max(0, max_delay),
        ),
        instance_memory_mb=mem if mem is not None and mem > 0 else None,
    )


def config_with_knobs(cfg: Mapping[str, Any], knobs: Knobs) -> Config:
    """A full copy of ``cfg`` with ``knobs`` written in (ready for ``load_model(config=)``)."""
    out: Config = copy.deepcopy(dict(cfg))
    if int(out.get("max_batch_size", 0)) > 0:
        out["max_batch_size"] = knobs.max_batch_size
        batching = dict(out.get("dynamic_batching") or {})
        batching["max_queue_delay_microseconds"] = knobs.queue_delay_us
        # Triton auto-fills preferred_batch_size with the old max; a stale one above the
        # new max would make the config invalid.
        batching.pop("preferred_batch_size", None)
        out["dynamic_batching"] = batching
    groups = [dict(g) for g in (out.get("instance_group") or [{"kind": "KIND_CPU"}])]
    first = groups[0]
    others = sum(int(g.get("count", 1)) for g in groups[1:])
    if knobs.instances - others >= 1:
        first["count"] = knobs.instances - others
    else:  # cannot keep the other groups: collapse into one
        groups = [first]
        first["count"] = knobs.instances
    groups[0] = first
    out["instance_group"] = groups
    return out


def change_kind(old: Knobs, new: Knobs) -> ChangeKind:
    """How Triton will apply ``old`` → ``new``."""
    if old == new:
        return ChangeKind.NONE
    if (old.max_batch_size, old.queue_delay_us) != (new.max_batch_size, new.queue_delay_us):
        return ChangeKind.RELOAD
    return ChangeKind.INSTANCES_UP if new.instances > old.instances else ChangeKind.INSTANCES_DOWN
