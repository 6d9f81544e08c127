"""`dnnscaler bench torchserve` runs on a real local TorchServe and writes its report.

As short as the protocol allows: one model, a one-config oracle grid and one policy on a
short staircase (two TorchServe starts in all), so that it checks the wiring (adapter,
report, tables, PNG), not the policies' figures.
"""

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

pytestmark = [pytest.mark.slow, pytest.mark.torchserve, pytest.mark.timeout(300)]

SLO_MS = 300.0


def _procs_with(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (TorchServe's Java frontend and its
    workers carry their work folder's path: ``-Djava.io.tmpdir``, the worker socket)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """The bench's TMPDIR, where its servers' folders live: short, because TorchServe's
    worker sockets sit in them and a Unix socket's path holds 107 bytes (pytest's
    ``tmp_path`` is too deep)."""
    path = Path(tempfile.mkdtemp(prefix="dnnscaler-ts-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_bench_torchserve_quick(
    tmp_path: Path, short_tmp: Path, record_property: Callable[[str, object], None]
) -> None:
    if not torchserve_installed():
        pytest.skip("TorchServe or Java 17 not installed (pip install 'dnnscaler[torchserve]')")
    tmp = short_tmp
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dnnscaler.cli", "--log-level", "warning", "bench"]
    cmd += ["torchserve", "--quick", "--models", "wide_mlp", "--policies", "dnnscaler"]
    cmd += ["--grid", "8x2", "--step-windows", "3", "--out", str(out)]
    # An SLO this box meets even slowed down: the test checks the wiring, and a capacity of
    # 0 leaves nothing to wire. At the model's own 60 ms, fresh clone 62 (12-07, the real-
    # server tests beside the rest of the suite) read p99 182, 115 and 68 ms at the
    # sweep's 529, 264 and 132 rps: no capacity, and a staircase at 0 rps.
    cmd += ["--slo-ms", str(SLO_MS)]
    t0 = time.monotonic()
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)},
    )
    record_property("bench_s", round(time.monotonic() - t0, 1))
    why = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, why
    # The tables on the console, and the closing line naming the bench.
    assert f"wide_mlp  (SLO p99 <= {SLO_MS:.1f} ms" in r.stdout, why
    assert "summary over models" in r.stdout, why
    assert "bench torchserve: " in r.stdout and "results.json" in r.stdout, why
    doc = json.loads((out / "results.json").read_text())
    assert doc["bench"] == "torchserve"
    assert doc["complete"] is True and doc["errors"] == []
    [rec] = doc["records"]
    assert (rec["model"], rec["policy"]) == ("wide_mlp", "dnnscaler")
    assert rec["oracle_capacity_rps"] > 0, (
        f"no capacity at the oracle's config: {doc['oracle_sweep']}"
    )
    assert rec["failed_requests"] == 0, rec.get("failed_request_log") or rec.get("error")
    [sweep] = doc["oracle_sweep"]
    assert sweep["knobs"] == {"max_batch_size": 8, "instances": 2, "queue_delay_us": 0}
    assert sweep["probes"], sweep
    assert (out / "capacity.png").stat().st_size > 10_000
    assert (out / "timeseries_wide_mlp_dnnscaler.png").stat().st_size > 10_000
    record_property("oracle_capacity_rps", rec["oracle_capacity_rps"])
    record_property("online_capacity_rps", rec["online_capacity_rps"])
    # Every server stopped, every work folder removed.
    assert _procs_with(str(tmp)) == []
    assert list(tmp.iterdir()) == []
