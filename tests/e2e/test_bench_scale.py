"""``bench scale`` at toy size: a real controller process, simulated agents on real gRPC
streams in a worker process; checks the wiring and the report's structure, not figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dnnscaler.bench.scale import ScaleConfig, bucket_quantile, run_scale, write_scale_report


@pytest.mark.serial  # simulated agents as fast as a worker process can send
def test_bench_scale_smoke(tmp_path: Path) -> None:
    cfg = ScaleConfig(stages=(20, 50), models=2, workers=1, settle_s=1.0, measure_s=3.0)
    res = run_scale(cfg, tmp_path / "run")
    write_scale_report(res, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "scale.json").read_text())
    assert (tmp_path / "out" / "scale.png").stat().st_size > 0
    assert doc["bench"] == "scale" and doc["config"]["stages"] == [20, 50]
    assert [s["agents"] for s in doc["stages"]] == [20, 50], doc
    for s in doc["stages"]:
        assert s["agents_held"] == s["agents"], s
        assert s["reports_sent"] > 0 and s["reports_decided"] > 0, s
        assert s["reports_lost"] == max(0, s["reports_sent"] - s["reports_decided"]), s
        assert s["controller_rss_mb"] > 0 and s["p99_ms"] is not None, s
        assert set(s) >= {"controller_cpu_cores", "generators_cpu_cores", "meets_target"}, s
    assert "knee_agents" in doc and "broke_at" in doc


def test_bucket_quantile_interpolates_within_the_bucket() -> None:
    lo = {0.01: 0.0, 0.1: 0.0, float("inf"): 0.0}
    hi = {0.01: 50.0, 0.1: 100.0, float("inf"): 100.0}
    assert bucket_quantile(0.5, lo, hi) == 0.01
    q99 = bucket_quantile(0.99, lo, hi)
    assert q99 is not None and abs(q99 - (0.01 + 0.09 * 49 / 50)) < 1e-9
    assert bucket_quantile(0.99, hi, hi) is None  # nothing observed between the scrapes
    over = {0.01: 0.0, 0.1: 0.0, float("inf"): 10.0}
    assert bucket_quantile(0.99, lo, over) == 0.1  # past the last bucket: its edge
