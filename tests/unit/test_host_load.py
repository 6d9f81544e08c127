"""``bench.host_load``: CPU used outside our process tree, from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from dnnscaler.bench.host_load import (
    CpuSample,
    HostLoad,
    HostMeter,
    busy_phases,
    host_load,
    sample,
)


def _stat(pid: int, comm: str, ppid: int, utime: int, stime: int, cutime: int = 0) -> str:
    # Fields after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime ...
    rest = f"S {ppid} 0 0 0 0 0 0 0 0 0 {utime} {stime} {cutime} 0 20 0 1 0"
    return f"{pid} ({comm}) {rest}\n"


def _fake_proc(root: Path, cpu_line: str, procs: list[tuple[int, str, int, int, int, int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    per_cpu = "cpu0 1 0 0 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0 0 0\n"
    (root / "stat").write_text(cpu_line + "\n" + per_cpu + "intr 0\n")
    for pid, comm, ppid, ut, st, cut in procs:
        (root / str(pid)).mkdir()
        (root / str(pid) / "stat").write_text(_stat(pid, comm, ppid, ut, st, cut))
    (root / "self").mkdir()  # not a pid: skipped
    return root


def test_sample_counts_the_tree_under_the_root_with_reaped_children(tmp_path: Path) -> None:
    proc = _fake_proc(
        tmp_path / "proc",
        "cpu  100 5 50 1000 7 3 2 11 0 0",
        [
            (1, "init", 0, 1, 1, 0),
            (10, "python (pytest) x)", 1, 30, 10, 0),  # comm with spaces and parentheses
            (11, "tritonserver", 10, 40, 5, 25),  # reaped stubs in cutime
            (12, "triton_python_backend_stub", 11, 7, 1, 0),
            (20, "neighbour", 1, 500, 0, 0),
        ],
    )
    s = sample(10, proc, cpus=2)
    assert s is not None
    assert (s.busy, s.steal) == (100 + 5 + 50 + 3 + 2, 11)
    assert s.ours == 30 + 10 + 40 + 5 + 25 + 7 + 1
    # Counters of more CPUs than ours (a container seeing its host's): not ours to read.
    assert sample(10, proc, cpus=1) is None


def test_host_load_is_what_the_rest_of_the_host_used() -> None:
    before = CpuSample(t_s=0.0, busy=1000, steal=0, ours=400)
    after = CpuSample(t_s=2.0, busy=1300, steal=40, ours=600)  # others: 100 ticks in 2 s
    load = host_load(before, after, hz=100)
    assert (round(load.others_cpus, 3), round(load.steal_cpus, 3)) == (0.5, 0.2)
    assert str(load) == "others 0.50 CPUs, steal 0.20 CPUs"


def test_busy_phases_names_the_phases_over_the_limit() -> None:
    quiet, busy, stolen = HostLoad(0.02, 0.0), HostLoad(0.5, 0.0), HostLoad(0.1, 0.15)
    assert busy_phases({"sweep": quiet, "converge": quiet}, 0.2) is None
    assert busy_phases({"sweep": quiet, "converge": busy, "ladder": stolen}, 0.2) == (
        "converge: others 0.50 CPUs, steal 0.00 CPUs, ladder: others 0.10 CPUs, steal 0.15 CPUs"
    )
    assert busy_phases({}, 0.2) is None
    assert round(stolen.total_cpus, 3) == 0.25


def test_no_proc_no_sample(tmp_path: Path) -> None:
    assert sample(proc=tmp_path / "missing") is None


def test_on_the_real_proc_our_own_and_our_childrens_cpu_counts_as_ours() -> None:
    before = sample()
    if before is None:  # not Linux
        return
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass",
        ],
        check=True,
    )
    assert child.returncode == 0
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    after = sample()
    assert after is not None
    hz = os.sysconf("SC_CLK_TCK")
    # 0.6 s of CPU burned by us and a reaped child (a margin for tick rounding).
    assert (after.ours - before.ours) / hz >= 0.5


def test_a_meter_reads_the_load_since_its_last_read() -> None:
    meter = HostMeter()
    if sample() is None:  # not Linux
        assert meter.read() is None
        return
    first, second = meter.read(), meter.read()
    assert first is not None and second is not None
    assert min(first.others_cpus, first.steal_cpus, second.total_cpus) >= 0.0
