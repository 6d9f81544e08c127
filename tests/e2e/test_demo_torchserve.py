"""`dnnscaler demo --backend torchserve` runs end to end on a real local TorchServe, ends by
itself, exits 0, writes its outputs and leaves no TorchServe process or folder behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dnnscaler.torchserve.install import torchserve_installed

from .processes import command_lines_with

MODELS = {"wide_mlp", "serial_io"}


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """The demo's TMPDIR, where its servers' folders live: short, because TorchServe's
    worker sockets sit in them and a Unix socket's path holds 107 bytes (pytest's
    ``tmp_path`` is too deep)."""
    path = Path(tempfile.mkdtemp(prefix="dnnscaler-ts-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.torchserve
@pytest.mark.timeout(300)
def test_demo_real_torchserve(
    tmp_path: Path, short_tmp: Path, record_property: Callable[[str, object], None]
) -> None:
    if not torchserve_installed():
        pytest.skip("TorchServe or Java 17 not installed (pip install 'dnnscaler[torchserve]')")
    tmp = short_tmp
    out_dir = tmp_path / "out"
    cmd = [sys.executable, "-m", "dnnscaler.cli", "demo", "--backend", "torchserve"]
    cmd += ["--step-s", "4", "--out", str(out_dir)]
    t0 = time.monotonic()
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)},
    )
    record_property("demo_s", round(time.monotonic() - t0, 1))
    why = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, why
    assert "dnnscaler demo (torchserve)" in r.stdout and "demo summary" in r.stdout, why
    doc = json.loads((out_dir / "summary.json").read_text())
    assert doc["backend"] == "torchserve"
    assert doc["server_death"] is None
    assert doc["failed_requests"] == 0, doc.get("failed_request_log")
    # The controller saw both models, with their SLOs set.
    assert {m["model"] for m in doc["models"]} == MODELS
    assert {m["slo"] for m in doc["models"]} == {"p99<=50ms", "p99<=60ms"}
    # The agent reported windows measured on the server (access log): per model, windows
    # with completed requests and a tail latency, at a throughput near the offered rate.
    for model in MODELS:
        rows = [s for s in doc["samples"] if s["model"] == model]
        measured = [s for s in rows if s["latency_ms"] is not None and s["throughput_rps"] > 0]
        assert len(measured) >= len(rows) // 2 >= 4, (model, rows)
        first = [s for s in measured if s["offered_rps"] == rows[0]["offered_rps"]]
        assert any(0.5 * s["offered_rps"] <= s["throughput_rps"] for s in first), (model, rows)
    record_property(
        "knob_changes", json.dumps({m["model"]: m["knob_changes"] for m in doc["models"]})
    )
    assert (out_dir / "demo.png").stat().st_size > 10_000
    # Nothing left: no Java frontend or worker of the demo's server, no folder.
    deadline = time.monotonic() + 10
    while command_lines_with(str(tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert command_lines_with(str(tmp)) == []
    assert list(tmp.iterdir()) == []
