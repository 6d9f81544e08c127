"""Find the TorchServe install: its launcher script, the archiver, and Java 17.

TorchServe's frontend is Java; its workers run this interpreter's Python (they need torch
and PyYAML, which torchserve does not declare). ``find_torchserve`` raises one clear error
naming what is missing and how to get it, before anything is started.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

JAVA_MAJOR = 17


class TorchServeNotInstalled(RuntimeError):
    """TorchServe, one of its Python needs, or Java is missing; the message says which."""


@dataclass(frozen=True)
class TorchServeInstall:
    launcher: Path
    java: Path
    bin_dir: Path

    def environment(self, tmpdir: Path, log_dir: Path) -> dict[str, str]:
        """The server's environment: this venv first on PATH (workers use its Python), its
        own TMPDIR (TorchServe keeps its PID file there) and log folder."""
        env = dict(os.environ)
        env["PATH"] = (
            f"{self.bin_dir}{os.pathsep}{self.java.parent}{os.pathsep}{env.get('PATH', '')}"
        )
        env["TMPDIR"] = str(tmpdir)
        env["LOG_LOCATION"] = str(log_dir)
        env["METRICS_LOCATION"] = str(log_dir)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.pop("JAVA_TOOL_OPTIONS", None)
        return env


def find_java() -> Path:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH, checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    candidate = Path(home) / "bin" / "java" if home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise TorchServeNotInstalled(
            "Java is not installed: TorchServe's frontend needs Java 17 "
            "(Debian: apt-get install openjdk-17-jre-headless), on PATH or in JAVA_HOME"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TorchServeNotInstalled(f"{java} -version failed: {exc}") from exc
    match = re.search(r'version "(\d+)', out.stderr + out.stdout)
    if match is None or int(match.group(1)) < JAVA_MAJOR:
        raise TorchServeNotInstalled(
            f"{java} is not Java {JAVA_MAJOR} or newer: {(out.stderr or out.stdout).strip()[:200]}"
        )
    return Path(java)


def find_torchserve() -> TorchServeInstall:
    bin_dir = Path(sys.executable).parent
    launcher = bin_dir / "torchserve"
    if not launcher.is_file():
        found = shutil.which("torchserve")
        if found is None:
            raise TorchServeNotInstalled(
                "torchserve is not installed: pip install 'dnnscaler[torchserve]'"
            )
        launcher = Path(found)
    for module, why in (("yaml", "PyYAML (workers die without it)"), ("torch", "torch")):
        if importlib.util.find_spec(module) is None:
            raise TorchServeNotInstalled(
                f"{why} is not installed: pip install 'dnnscaler[torchserve]'"
            )
    return TorchServeInstall(launcher=launcher, java=find_java(), bin_dir=bin_dir)


def torchserve_installed() -> bool:
    try:
        find_torchserve()
    except TorchServeNotInstalled:
        return False
    return True
