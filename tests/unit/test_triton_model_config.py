"""Pure config <-> knobs translation for Triton."""

from __future__ import annotations

from typing import Any

import pytest

from dnnscaler.core.types import Knobs
from dnnscaler.triton.model_config import (
    ChangeKind,
    change_kind,
    config_with_knobs,
    declared_from_config,
    knobs_from_config,
    runs_on_cpu,
)


def _cfg(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "m",
        "backend": "python",
        "max_batch_size": 16,
        "dynamic_batching": {"preferred_batch_size": [16], "max_queue_delay_microseconds": "100"},
        "instance_group": [{"name": "m_0", "count": 2, "kind": "KIND_CPU"}],
        "parameters": {
            "dnnscaler.max_batch_size": {"string_value": "64"},
            "dnnscaler.max_instances": {"string_value": "4"},
            "dnnscaler.instance_memory_mb": {"string_value": "80"},
        },
    }
    cfg.update(over)
    return cfg


def test_knobs_read_from_config_json_strings() -> None:
    assert knobs_from_config(_cfg()) == Knobs(max_batch_size=16, instances=2, queue_delay_us=100)


def test_defaults_when_fields_absent() -> None:
    assert knobs_from_config({"max_batch_size": 4}) == Knobs(4, 1, 0)
    assert knobs_from_config({"max_batch_size": 0}) == Knobs(1, 1, 0)


def test_declared_limits_from_parameters() -> None:
    d = declared_from_config(_cfg())
    assert (d.limits.max_batch_size, d.limits.max_instances) == (64, 4)
    assert d.instance_memory_mb == 80.0


def test_declared_limits_fall_back_to_first_seen_batch() -> None:
    d = declared_from_config({"max_batch_size": 8}, default_max_batch=32)
    assert d.limits.max_batch_size == 32
    assert d.limits.max_instances == 10
    assert d.instance_memory_mb is None
    assert declared_from_config({"max_batch_size": 8}).limits.max_batch_size == 8


def test_non_batching_model_is_limited_to_batch_one() -> None:
    d = declared_from_config({"max_batch_size": 0, "parameters": {}})
    assert d.limits.max_batch_size == 1
    out = config_with_knobs({"max_batch_size": 0}, Knobs(1, 3, 0))
    assert out["max_batch_size"] == 0
    assert out["instance_group"][0]["count"] == 3


def test_config_with_knobs_keeps_everything_else_and_drops_stale_preferred() -> None:
    cfg = _cfg()
    out = config_with_knobs(cfg, Knobs(max_batch_size=4, instances=3, queue_delay_us=500))
    assert out["max_batch_size"] == 4
    assert out["dynamic_batching"]["max_queue_delay_microseconds"] == 500
    assert "preferred_batch_size" not in out["dynamic_batching"]
    assert out["instance_group"] == [{"name": "m_0", "count": 3, "kind": "KIND_CPU"}]
    assert out["parameters"] == cfg["parameters"]
    assert cfg["max_batch_size"] == 16  # input untouched
    assert knobs_from_config(out) == Knobs(4, 3, 500)


def test_config_with_knobs_over_several_groups() -> None:
    cfg = _cfg(instance_group=[{"count": 2}, {"count": 3}])
    out = config_with_knobs(cfg, Knobs(16, 4, 0))
    assert knobs_from_config(out).instances == 4
    out = config_with_knobs(cfg, Knobs(16, 2, 0))
    assert out["instance_group"] == [{"count": 2}]


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        (Knobs(8, 2, 0), Knobs(8, 2, 0), ChangeKind.NONE),
        (Knobs(8, 2, 0), Knobs(8, 3, 0), ChangeKind.INSTANCES_UP),
        (Knobs(8, 2, 0), Knobs(8, 1, 0), ChangeKind.INSTANCES_DOWN),
        (Knobs(8, 2, 0), Knobs(4, 1, 0), ChangeKind.RELOAD),
        (Knobs(8, 2, 0), Knobs(8, 2, 100), ChangeKind.RELOAD),
    ],
)
def test_change_kind(old: Knobs, new: Knobs, kind: ChangeKind) -> None:
    assert change_kind(old, new) is kind


def test_runs_on_cpu_only_when_every_group_is_cpu() -> None:
    assert runs_on_cpu(_cfg())
    assert not runs_on_cpu(_cfg(instance_group=[{"count": 1, "kind": "KIND_GPU"}]))
    mixed = [{"count": 1, "kind": "KIND_CPU"}, {"count": 1, "kind": "KIND_GPU"}]
    assert not runs_on_cpu(_cfg(instance_group=mixed))
    assert not runs_on_cpu(_cfg(instance_group=[]))
