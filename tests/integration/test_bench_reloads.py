"""`dnnscaler bench reloads`: knob changes on a real Triton under load lose no request.

One cycle of every kind of change (5 full reloads through the agent's backend) at
200 requests a second, with statistics, metadata and config polled every 50 ms and the
agent's windows beside the client's. The heavy soak (``--reloads 200``) is the benchmark's
own run, in docs/results/reloads.md; this is the same code, short. Counts, not times: a
slow box makes reloads longer, not failures more likely."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.timeout(400)]


def _run(out: Path) -> tuple[int, dict, str]:
    cmd = [
        sys.executable, "-m", "dnnscaler.cli", "--log-level", "warning", "bench", "reloads",
        "--reloads", "5", "--rate-rps", "200", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=360)
    doc = json.loads((out / "reloads.json").read_text()) if (out / "reloads.json").exists() else {}
    return proc.returncode, doc, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_reloads_under_load_fail_no_request(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    code, doc, output = _run(tmp_path / "a")
    s = doc.get("summary", {})
    if code != 0 and (s.get("upstream_defect") or s.get("server_death")):
        # Triton 2.51's own defect or crash (docs/triton.md; it died once in ~200 reloads on
        # 12-07), recorded and measured again once: a second one is the test's failure.
        record_property("attempt_1_not_judged", s.get("upstream_defect") or s["server_death"])
        code, doc, output = _run(tmp_path / "b")
        s = doc.get("summary", {})
    assert doc, f"no report written (exit {code}): {output}"
    record_property("reloads", json.dumps(s))
    why = (
        f"{json.dumps(s)}; failed requests: {doc['request_errors'][:10]}; unanswered polls:"
        f" {doc['unanswered_polls'][:10]}; server log: {doc['server_log_tail']}"
    )
    assert s["reloads"] == 5 and s["failed_reloads"] == 0, why
    assert s["failed_requests"] == 0 and s["requests_completed"] > 500, why
    assert s["server_death"] is None, why
    # Statistics and metadata answer during a reload, and no agent window reads an idle
    # model while clients are served.
    assert sum(s["poll_failures"].values()) == 0, why
    assert s["false_windows"] == 0, why
    assert code == 0, f"exit {code}: {output}"
    assert (tmp_path / "a" / "reloads.png").exists() or (tmp_path / "b" / "reloads.png").exists()
