"""Fixtures for every test folder."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

MarginRecorder = Callable[..., None]


@pytest.fixture
def margin(record_property: Callable[[str, object], None]) -> MarginRecorder:
    """Record how far a statistical assertion was from failing, for the flake gate
    (``scripts/flake_gate.py`` reads it from the JUnit XML).

    ``margin(name, value, low=..., high=...)``: ``slack`` is the distance from ``value`` to
    the nearer bound over the interval's width when both are given (0.5 = the middle, 0 =
    on the edge, < 0 = failed), or the plain distance from the one bound given.
    """

    def record(
        name: str, value: float, *, low: float | None = None, high: float | None = None
    ) -> None:
        if low is not None and high is not None:
            slack = min(value - low, high - value) / max(high - low, 1e-12)
        elif low is not None:
            slack = value - low
        elif high is not None:
            slack = high - value
        else:
            raise ValueError("a margin needs a bound")
        doc = {"name": name, "value": value, "low": low, "high": high, "slack": slack}
        record_property(f"margin:{name}", json.dumps(doc))

    return record
