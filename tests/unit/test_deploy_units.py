"""The shipped systemd units parse and pass `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "dnnscaler"
    assert exe.exists(), "the dnnscaler console script must be installed"
    for unit in (ROOT / "deploy/systemd").glob("*.service"):
        text = unit.read_text().replace("/opt/dnnscaler/venv/bin/dnnscaler", str(exe))
        text = text.replace("User=dnnscaler", "User=root").replace("Group=dnnscaler", "Group=root")
        name = unit.name.replace("@.service", "@0.service")
        (tmp_path / name).write_text(text)
    units = sorted(str(p) for p in tmp_path.glob("*.service"))
    assert len(units) == 2
    r = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "dnnscaler-agent@0.service" in " ".join(units)
