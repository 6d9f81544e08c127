"""The flake gate counts passes, failures and margins from JUnit XML (no pytest run)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "flake_gate.py"
spec = importlib.util.spec_from_file_location("flake_gate", SCRIPT)
assert spec is not None and spec.loader is not None
gate = importlib.util.module_from_spec(spec)
sys.modules["flake_gate"] = gate  # dataclasses look their module up
spec.loader.exec_module(gate)

XML = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.a" name="test_ok" time="1.5"><properties>
<property name="margin:band" value='{margin}'/></properties></testcase>
<testcase classname="tests.a" name="test_bad" time="2.0">
<failure message="AssertionError: agent p99 outside the band&#10;more">tb</failure></testcase>
<testcase classname="tests.a" name="test_skip" time="0.1"><skipped message="xfail"/></testcase>
</testsuite></testsuites>
"""


def test_tally_and_table(tmp_path: Path) -> None:
    tally = defaultdict(gate.TestTally)
    for k, slack in enumerate((0.25, 0.5, 0.1)):
        doc = {"name": "band", "value": 1.0, "low": 0.0, "high": 2.0, "slack": slack}
        path = tmp_path / f"j{k}.xml"
        path.write_text(XML.format(margin=json.dumps(doc)))
        gate.parse_junit(path, tally, f"run {k}")
    ok, bad, skip = (tally[f"tests.a::{n}"] for n in ("test_ok", "test_bad", "test_skip"))
    assert (ok.runs, ok.passed, ok.failed) == (3, 3, 0)
    assert (bad.passed, bad.failed) == (0, 3) and bad.failures[0].endswith("outside the band")
    assert skip.skipped == 3 and skip.passed == 0
    assert [d["slack"] for d in ok.margins["band"]] == [0.25, 0.5, 0.1]
    rows = gate.table(tally)
    row = next(r for r in rows if "test_ok" in r)
    assert "| 3 | 3 | 0 | 0 | 100% | band: 0.1 / 0.25 (3) | 1.5 |" in row


def test_main_ingests_and_fails_on_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_text(XML.format(margin=json.dumps({"slack": 0.3})))
    rc = gate.main(["--ingest", str(path), "--out", str(tmp_path / "o")])
    assert rc == 1
    doc = json.loads((tmp_path / "o" / "flake.json").read_text())
    assert doc["tests.a::test_bad"]["failed"] == 1
    assert (tmp_path / "o" / "flake.md").read_text().startswith("| test |")
