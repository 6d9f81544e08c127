"""`dnnscaler demo` runs end to end, ends by itself, exits 0 and writes its outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dnnscaler.cli", "demo", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _check(tmp_path: Path, r: subprocess.CompletedProcess[str], models: set[str]) -> dict:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "demo summary" in r.stdout
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert {m["model"] for m in doc["models"]} == models
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert doc["failed_requests"] == 0, doc.get("failed_request_log")
    return doc


@pytest.mark.timeout(300)
def test_demo_sim(tmp_path: Path) -> None:
    r = _demo(tmp_path, "--backend", "sim", "--step-s", "3")
    doc = _check(tmp_path, r, {"mobilenet", "inception"})
    # The controller acted: knobs moved away from the defaults on at least one model.
    assert any(
        (m["final_knobs"]["max_batch_size"], m["final_knobs"]["instances"]) != (1, 1)
        for m in doc["models"]
    )


@pytest.mark.slow
@pytest.mark.triton
@pytest.mark.timeout(600)
def test_demo_real_triton(tmp_path: Path, record_property: Callable[[str, object], None]) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for attempt in (1, 2):
        out_dir = tmp_path / f"attempt{attempt}"
        cmd = [sys.executable, "-m", "dnnscaler.cli", "demo", "--out", str(out_dir)]
        with subprocess.Popen(
            [*cmd, "--step-s", "8"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as p:
            out, err = p.communicate(timeout=280)
        _no_leftovers(p.pid)
        summary = out_dir / "summary.json"
        doc = json.loads(summary.read_text()) if summary.exists() else {}
        failing = set(doc.get("failed_request_log") or {})
        defects = doc.get("failed_requests_upstream_defects") or {}
        if doc.get("server_death"):
            # Triton died under the demo (docs/triton.md): its exit code and log tail are
            # kept in the JUnit file, and the demo runs once more on a fresh server.
            why = f"the inference server died: {doc['server_death']}"
        elif failing and set(defects) == failing:
            # Every failed request was Triton's own defect (known_defects), not a failed
            # apply: kept in the JUnit file and run once more.
            why = f"server defect: {json.dumps(defects)}"
        else:
            break
        record_property(f"attempt_{attempt}_not_judged", why[:3000])
        print(f"attempt {attempt} not judged: {why}")
    r = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    doc = _check(out_dir, r, {"wide_mlp", "serial_io"})
    assert sum(m["knob_changes"] for m in doc["models"]) >= 1


def _no_leftovers(pid: int) -> None:
    """No Triton of the demo's left, no shared-memory file of its servers (the launcher
    names them dnnscaler_<pid of its owner>_...)."""
    leftovers = subprocess.run(["pgrep", "-f", "dnnscaler-demo-"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
    assert [f for f in os.listdir("/dev/shm") if f.startswith(f"dnnscaler_{pid}_")] == []
