"""How much of the host's CPU went to work that is not ours over an interval: the noise a
benchmark on a shared box measured under (a neighbour process, or steal time on a VM).

On these CPU-only boxes the "GPU" is the host's cores, so a neighbour's load changes which
config is best (more instances win a larger fair share of a contended CPU). A benchmark
that prints what the rest of the host used can tell such a run from a policy's miss.
Reads ``/proc`` (Linux); elsewhere ``sample`` returns None and nothing is reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU counters at one instant, in clock ticks (all CPUs together)."""

    t_s: float  # monotonic
    busy: int  # user, nice, system, irq, softirq: every process on the host
    steal: int  # taken by the hypervisor for other guests
    ours: int  # our process tree: its live processes and the children they reaped


@dataclass(frozen=True)
class HostLoad:
    """The host's CPU over an interval, besides our own process tree."""

    others_cpus: float  # CPUs' worth used by processes outside our tree
    steal_cpus: float  # CPUs' worth taken by the hypervisor

    @property
    def total_cpus(self) -> float:
        return self.others_cpus + self.steal_cpus

    def __str__(self) -> str:
        return f"others {self.others_cpus:.2f} CPUs, steal {self.steal_cpus:.2f} CPUs"


def _tree_ticks(root: int, proc: Path) -> int:
    """utime + stime of every live process under ``root`` (itself included), plus the
    cutime + cstime of the children each has reaped (a reloaded model's old stub)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            text = (d / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = text.rsplit(")", 1)[1].split()
        pid = int(d.name)
        parent[pid] = int(fields[1])
        # utime, stime, cutime, cstime are fields 14-17 of the whole line.
        ticks[pid] = sum(int(x) for x in fields[11:15])
    inside = {root}
    grew = True
    while grew:
        more = {p for p, pp in parent.items() if pp in inside and p not in inside}
        inside |= more
        grew = bool(more)
    return sum(ticks.get(p, 0) for p in inside)


def sample(
    root_pid: int | None = None, proc: Path = PROC, cpus: int | None = None
) -> CpuSample | None:
    """The counters now, for the process tree under ``root_pid`` (default: this process).

    None where ``/proc`` cannot be read, or where its counters cover other CPUs than the
    ``cpus`` we may run on (default: our affinity): a container that sees its host's
    counters would count every other tenant as a neighbour of ours."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None
    head = lines[0].split() if lines else []
    if not head or head[0] != "cpu":
        return None
    per_cpu = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    if per_cpu != (len(os.sched_getaffinity(0)) if cpus is None else cpus):
        return None
    v = [int(x) for x in head[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v + [0] * (8 - len(v))
    ours = _tree_ticks(os.getpid() if root_pid is None else root_pid, proc)
    return CpuSample(time.monotonic(), user + nice + system + irq + softirq, steal, ours)


def host_load(before: CpuSample, after: CpuSample, hz: int | None = None) -> HostLoad:
    """What the rest of the host used between two samples, in CPUs' worth."""
    tick = hz or os.sysconf("SC_CLK_TCK")
    wall = max(1e-6, after.t_s - before.t_s)
    others = (after.busy - before.busy) - (after.ours - before.ours)
    return HostLoad(
        others_cpus=max(0.0, others / tick / wall),
        steal_cpus=max(0.0, (after.steal - before.steal) / tick / wall),
    )


class HostMeter:
    """The host's load between consecutive reads (a benchmark's phases or windows)."""

    def __init__(self) -> None:
        self._last = sample()

    def read(self) -> HostLoad | None:
        """What the rest of the host used since the last read (None: not measurable)."""
        last, self._last = self._last, sample()
        return host_load(last, self._last) if last is not None and self._last is not None else None


def busy_phases(loads: Mapping[str, HostLoad], limit_cpus: float) -> str | None:
    """The phases in which the rest of the host (others and steal) took more than
    ``limit_cpus``, said in words; None if none did."""
    busy = [f"{k}: {v}" for k, v in loads.items() if v.total_cpus > limit_cpus]
    return ", ".join(busy) if busy else None
