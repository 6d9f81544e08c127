#!/usr/bin/env python3
"""Flake gate: run chosen tests N times and print each test's pass rate and margin.

    .venv/bin/python scripts/flake_gate.py -n 20 --out out/flake -- tests/integration/test_x.py
    .venv/bin/python scripts/flake_gate.py --ingest out/ci-1/test-results.xml ... --out out/flake

Each run is a fresh ``pytest`` process writing JUnit XML (``RUN/junit-K.xml``). Tests that
make a statistical assertion record its margin through the ``margin`` fixture
(``tests/conftest.py``): the value, the bound(s) and the ``slack`` (distance to the nearer
bound; over the band's width for two-sided bounds). ``--ingest`` adds the XML of earlier
runs (a CI run's ``out/test-results.xml``, say) without running anything.

Prints one table row per test: runs, passed, failed, skipped/xfailed, the pass rate, the
smallest and median slack of each recorded margin, and the median duration; the first line
of every failure's message is listed below it. Writes ``OUT/flake.json`` and
``OUT/flake.md`` (the table as Markdown). Exits 1 if any run failed or errored.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TestTally:
    runs: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0  # skipped or xfailed: could not be judged
    durations_s: list[float] = field(default_factory=list)
    margins: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        judged = self.passed + self.failed
        return self.passed / judged if judged else float("nan")


def parse_junit(path: Path, tally: dict[str, TestTally], source: str) -> None:
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        t = tally[name]
        t.runs += 1
        t.durations_s.append(float(case.get("time", "0") or 0))
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        if bad is not None:
            t.failed += 1
            msg = (bad.get("message") or bad.text or "").strip().splitlines()
            t.failures.append(f"{source}: {msg[0][:400] if msg else '(no message)'}")
        elif case.find("skipped") is not None:
            t.skipped += 1
        else:
            t.passed += 1
        for prop in case.iter("property"):
            key = prop.get("name", "")
            if key.startswith("margin:"):
                doc = json.loads(prop.get("value", "{}"))
                doc["source"] = source
                t.margins[key.removeprefix("margin:")].append(doc)


def run_once(k: int, out: Path, pytest_args: list[str]) -> Path:
    xml = out / f"junit-{k}.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
        *pytest_args,
    ]
    t0 = time.monotonic()
    with open(out / f"run-{k}.log", "wb") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    print(f"run {k}: rc {rc} in {time.monotonic() - t0:.0f} s", flush=True)
    return xml


def table(tally: dict[str, TestTally]) -> list[str]:
    rows = [
        "| test | runs | passed | failed | not judged | pass rate | margin: min slack"
        " / median slack (n) | median s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, t in sorted(tally.items()):
        margins = "; ".join(
            f"{m}: {min(d['slack'] for d in ds):.3g} / "
            f"{statistics.median(d['slack'] for d in ds):.3g} ({len(ds)})"
            for m, ds in sorted(t.margins.items())
        )
        med = statistics.median(t.durations_s) if t.durations_s else 0.0
        rows.append(
            f"| `{name}` | {t.runs} | {t.passed} | {t.failed} | {t.skipped} |"
            f" {t.pass_rate:.0%} | {margins or '-'} | {med:.1f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=0, help="pytest runs to make")
    ap.add_argument("--out", type=Path, default=Path("out/flake"))
    ap.add_argument("--ingest", type=Path, nargs="*", default=[], help="JUnit XML files")
    ap.add_argument("pytest_args", nargs="*", help="after --: what pytest selects")
    a = ap.parse_args(argv)
    if a.runs < 0:
        ap.error("--runs must be >= 0")
    if a.runs and not a.pytest_args:
        ap.error("name the tests to run after --")
    a.out.mkdir(parents=True, exist_ok=True)
    tally: dict[str, TestTally] = defaultdict(TestTally)
    for path in a.ingest:
        parse_junit(path, tally, str(path))
    for k in range(1, a.runs + 1):
        xml = run_once(k, a.out, a.pytest_args)
        if xml.exists():
            parse_junit(xml, tally, f"run {k}")
        else:
            tally["(pytest)"].runs += 1
            tally["(pytest)"].failed += 1
            tally["(pytest)"].failures.append(f"run {k}: no JUnit XML (see run-{k}.log)")
    rows = table(tally)
    print("\n".join(rows))
    for name, t in sorted(tally.items()):
        for f in t.failures:
            print(f"FAILED {name}: {f}")
    doc = {
        name: {
            "runs": t.runs,
            "passed": t.passed,
            "failed": t.failed,
            "not_judged": t.skipped,
            "durations_s": t.durations_s,
            "margins": t.margins,
            "failures": t.failures,
        }
        for name, t in sorted(tally.items())
    }
    (a.out / "flake.json").write_text(json.dumps(doc, indent=1))
    (a.out / "flake.md").write_text("\n".join(rows) + "\n")
    return 1 if any(t.failed for t in tally.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
