"""Finding processes by their command line (tests check that nothing outlives a stop)."""

from __future__ import annotations

from pathlib import Path


def procs_with(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (a Triton's stubs carry its shm prefix,
    its server the paths of its folders)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmd:
            found.append(int(proc.name))
    return found
