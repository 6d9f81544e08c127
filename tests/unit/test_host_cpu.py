"""The host CPU busy-share meter behind ``device_busy_share`` for CPU-kind models."""

from __future__ import annotations

from pathlib import Path

from dnnscaler.agents.host_cpu import HostCpuMeter, parse_cpu_line

STAT = "cpu  {u} 0 {s} {i} {w} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1 2 3\n"


def test_parse_reads_the_aggregate_line_and_counts_iowait_as_idle() -> None:
    assert parse_cpu_line(STAT.format(u=100, s=50, i=800, w=50)) == (1000, 850)
    assert parse_cpu_line("intr 1 2\n") is None
    assert parse_cpu_line("cpu  x y z w\n") is None


def test_meter_reports_the_busy_share_between_samples(tmp_path: Path) -> None:
    f = tmp_path / "stat"
    f.write_text(STAT.format(u=100, s=0, i=100, w=0))
    meter = HostCpuMeter(f)
    f.write_text(STAT.format(u=250, s=0, i=150, w=0))  # 150 busy of 200
    assert meter.sample() == 0.75
    assert meter.sample() is None  # no time passed


def test_meter_without_proc_stat_reports_nothing(tmp_path: Path) -> None:
    assert HostCpuMeter(tmp_path / "missing").sample() is None


def test_meter_reads_this_host() -> None:
    share = HostCpuMeter().sample()
    assert share is None or 0.0 <= share <= 1.0
