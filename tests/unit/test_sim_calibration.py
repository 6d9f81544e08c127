"""The simulated GPU reproduces the published batch-1 latency matrix (closed loop, k busy)."""

from __future__ import annotations

import pytest

from dnnscaler.core.types import Knobs
from dnnscaler.sim.profile import shipped_profiles
from dnnscaler.sim.server import SimServer

_PROFILES = shipped_profiles()
_CSV_ROWS = [n for n, p in _PROFILES.items() if p.source.startswith("DNNScaler")]


def test_every_csv_row_is_shipped() -> None:
    assert len(_CSV_ROWS) == 18


@pytest.mark.parametrize("name", _CSV_ROWS)
def test_mean_latency_matches_csv_for_every_k(name: str) -> None:
    prof = _PROFILES[name]
    for k, measured in enumerate(prof.lat_k_ms, start=1):
        srv = SimServer(prof, Knobs(max_batch_size=1, instances=k), seed=k)
        srv.set_closed_loop(k)
        # ~300 batches per instance whatever the model's speed.
        horizon = 300 * measured / 1000.0
        srv.advance_to(horizon / 10)
        srv.collect()
        srv.advance_to(horizon)
        w = srv.collect_window()
        assert w.latency_mean_ms is not None
        assert w.latency_mean_ms == pytest.approx(measured, rel=0.10), (name, k)
        assert set(w.batch_stats) == {1}
