"""`dnnscaler bench triton --quick` runs on a real local Triton and writes its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.timeout(600)]


def test_bench_triton_quick(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "dnnscaler.cli",
        "--log-level",
        "warning",
        "bench",
        "triton",
        "--quick",
        "--models",
        "serial_io",
        "--policies",
        "dnnscaler,static-default",
        "--out",
        str(tmp_path),
    ]
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=560,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["bench"] == "triton"
    recs = {x["policy"]: x for x in doc["records"]}
    assert set(recs) == {"dnnscaler", "static-default"}
    for rec in recs.values():
        for key in (
            "model",
            "approach",
            "final_knobs",
            "online_capacity_rps",
            "oracle_capacity_rps",
            "ratio_to_oracle",
            "violation_rate",
            "settle_windows",
            "failed_requests",
            "knob_changes",
        ):
            assert key in rec
        assert rec["failed_requests"] == 0
        assert rec["oracle_capacity_rps"] > 0
    assert doc["oracle_sweep"], "the oracle sweep is recorded"
    assert (tmp_path / "capacity.png").stat().st_size > 10_000


def test_bench_triton_rejects_unknown_names(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "dnnscaler.cli", "bench", "triton", "--out", str(tmp_path)]
    r = subprocess.run([*base, "--models", "nope"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "wide_mlp" in r.stderr
    r = subprocess.run([*base, "--policies", "magic"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "dnnscaler" in r.stderr
