"""Names and SLOs the admin API accepts, and how refusals quote what they refuse."""

from __future__ import annotations

import math

import pytest

from dnnscaler.controller.admin_checks import MAX_NAME_CHARS, check_name, shown
from dnnscaler.core.types import InvalidValue, Slo


def test_shown_cuts_long_values_and_says_how_long() -> None:
    assert shown("mnet") == "'mnet'"
    s = shown("x" * 100_000)
    assert len(s) < 100 and "100000 characters" in s


@pytest.mark.parametrize(
    ("value", "required", "says"),
    [
        ("", True, "must not be empty"),
        ("m" * (MAX_NAME_CHARS + 1), True, f"at most {MAX_NAME_CHARS}"),
        ("a\nb", True, "printable"),
        ("a\x00b", False, "printable"),
    ],
)
def test_bad_names_are_refused_naming_the_field(value: str, required: bool, says: str) -> None:
    with pytest.raises(InvalidValue) as ei:
        check_name("model", value, required=required)
    assert ei.value.field == "model" and says in ei.value.message


def test_good_names_pass() -> None:
    for value in ("mnet", "resnet_small", "m" * MAX_NAME_CHARS, "ünïcode-模型"):
        check_name("model", value)
    check_name("agent_id", "", required=False)


@pytest.mark.parametrize(
    ("latency_ms", "percentile", "field"),
    [
        (1e308, 99.0, "latency_ms"),
        (1e-6, 99.0, "latency_ms"),
        (math.inf, 99.0, "latency_ms"),
        (math.nan, 99.0, "latency_ms"),
        (50.0, 10.0, "percentile"),
        (50.0, 100.0, "percentile"),
        (50.0, math.nan, "percentile"),
    ],
)
def test_slo_out_of_range_is_refused(latency_ms: float, percentile: float, field: str) -> None:
    with pytest.raises(InvalidValue) as ei:
        Slo(latency_ms, percentile)
    assert ei.value.field == field


def test_slo_range_edges_pass() -> None:
    Slo(0.01, 50.0)
    Slo(3_600_000.0, 99.999)
