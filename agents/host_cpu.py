"""Host CPU busy share between two readings of ``/proc/stat``.

For models whose instances run on the CPU (Triton ``KIND_CPU``) the host's cores are the
serving device. Their busy share says what NVML cannot say for a GPU: whether another
instance would get compute of its own or only a time slice of what the others already use.

The reading is host-wide (the load generator or another model on the same host counts as
busy, which is right: it takes the cores an instance would need). On a host without
``/proc/stat`` the meter reports nothing, never a guess.
"""

from __future__ import annotations

from pathlib import Path

PROC_STAT = Path("/proc/stat")


def parse_cpu_line(text: str) -> tuple[int, int] | None:
    """(total, idle) jiffies from the aggregate ``cpu`` line of ``/proc/stat`` text.

    Idle counts ``idle`` and ``iowait``; ``guest`` time is already inside ``user``.
    """
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] != "cpu":
            continue
        try:
            values = [int(x) for x in fields[1:9]]
        except ValueError:
            return None
        if len(values) < 4:
            return None
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle
    return None


class HostCpuMeter:
    """Busy share of all host CPUs since the previous ``sample()``."""

    def __init__(self, path: Path = PROC_STAT) -> None:
        self.path = path
        self._last: tuple[int, int] | None = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            return parse_cpu_line(self.path.read_text())
        except OSError:
            return None

    def sample(self) -> float | None:
        """Share (0..1) of CPU time not idle since the last call; ``None`` if unknown."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        total = now[0] - last[0]
        if total <= 0:
            return None
        busy = total - (now[1] - last[1])
        return min(1.0, max(0.0, busy / total))
