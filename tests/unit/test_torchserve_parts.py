"""Pure parts of the TorchServe support: the access log, the counters, archives, settings."""

from __future__ import annotations

import datetime
import json
import os
import zipfile
from pathlib import Path

import pytest

from dnnscaler.agents.backends.torchserve import knobs_of
from dnnscaler.agents.config import AgentConfig
from dnnscaler.core.types import InvalidValue, Knobs
from dnnscaler.torchserve.access_log import AccessLogReader, parse_line
from dnnscaler.torchserve.archives import (
    MANIFEST,
    ArchiveError,
    DeclaredLimits,
    archive_version,
    other_version,
    read_limits,
    twin_archive,
    write_limits,
)
from dnnscaler.torchserve.launcher import delay_ms, register_query
from dnnscaler.torchserve.metrics import Counters, parse_counters

LINE = '2026-12-06T15:46:33,576 - /127.0.0.1:52188 "POST /predictions/wide_mlp HTTP/1.1" 200 13'


def test_access_line_is_one_request_with_its_latency_and_local_end_time() -> None:
    rec = parse_line(LINE)
    assert rec is not None
    assert (rec.model, rec.version, rec.status, rec.latency_ms, rec.ok) == (
        "wide_mlp",
        None,
        200,
        13.0,
        True,
    )
    local = datetime.datetime(2026, 12, 6, 15, 46, 33, 576000)
    assert rec.end_s == pytest.approx(local.timestamp())
    versioned = parse_line(LINE.replace("/predictions/wide_mlp", "/predictions/wide_mlp/1.0-b"))
    assert versioned is not None and versioned.version == "1.0-b"
    failed = parse_line(LINE.replace("200 13", "503 9"))
    assert failed is not None and not failed.ok


@pytest.mark.parametrize(
    "line",
    [
        '2026-12-06T15:43:58,462 - /127.0.0.1:38436 "GET /ping HTTP/1.1" 200 8',
        '2026-12-06T15:43:59,484 - /127.0.0.1:3 "POST /models?url=e.mar HTTP/1.1" 200 1006',
        "garbage",
        "",
    ],
)
def test_other_lines_are_not_requests(line: str) -> None:
    assert parse_line(line) is None


def test_reader_skips_old_lines_waits_for_partial_ones_and_follows_rotation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "access_log.log"
    path.write_text(LINE + "\n")
    reader = AccessLogReader(path)
    reader.start()
    assert reader.poll() == []  # before start: not this run's
    with open(path, "a") as fh:
        fh.write(LINE + "\n" + LINE[:30])
    assert len(reader.poll()) == 1  # the partial line waits
    with open(path, "a") as fh:
        fh.write(LINE[30:] + "\n")
    assert len(reader.poll()) == 1
    os.rename(path, tmp_path / "access_log.1.log")  # log4j rolls the file over
    path.write_text(LINE + "\n" + LINE + "\n")
    assert len(reader.poll()) == 2


BATCH_LINES = """DnnscalerBatches{ModelName="m",Level="Model",BatchSize="2",Hostname="vm",} 3.0
DnnscalerBatches{ModelName="m",Level="Model",BatchSize="1",Hostname="vm",} 4.0
DnnscalerBatchComputeMs{ModelName="m",Level="Model",BatchSize="2",Hostname="vm",} 30.0
DnnscalerBatchComputeMs{ModelName="m",Level="Model",BatchSize="1",Hostname="vm",} 20.0
"""

METRICS = """# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="m",model_version="default",hostname="vm",} 10.0
ts_inference_requests_total{model_name="m",model_version="1.0-b",hostname="vm",} 2.0
ts_inference_latency_microseconds{model_name="m",model_version="default",hostname="vm",} 60000.0
ts_queue_latency_microseconds{model_name="m",model_version="default",hostname="vm",} 12000.0
ts_inference_requests_total{model_name="other",model_version="default",hostname="vm",} 1.0
Requests2XX{Level="Host",Hostname="vm",} 13.0
"""


def test_counters_sum_versions_and_difference_with_restart() -> None:
    c = parse_counters(METRICS)
    assert c["m"] == Counters(requests=12.0, latency_us=60000.0, queue_us=12000.0)
    assert c["other"].requests == 1.0
    prev = Counters(2.0, 10000.0, 2000.0)
    d = c["m"].minus(prev)
    assert d == Counters(10.0, 50000.0, 10000.0)
    assert d.mean_ms(d.latency_us) == pytest.approx(5.0)
    assert c["m"].minus(Counters(100.0, 1e9, 0.0)) == c["m"]  # went back: restarted
    assert Counters().mean_ms(0.0) is None


def test_batch_counters_give_batch_stats_per_window() -> None:
    from dnnscaler.core.types import BatchStat

    now = parse_counters(METRICS + BATCH_LINES)["m"]
    assert now.batches == {2: (3.0, 30.0), 1: (4.0, 20.0)}
    prev = Counters(batches={2: (1.0, 10.0)})
    d = now.minus(prev)
    assert d.batch_stats() == {1: BatchStat(4, 5.0), 2: BatchStat(2, 10.0)}
    # per request, each counting its batch's time: (4 x 1 x 5 + 2 x 2 x 10) / 8
    assert d.compute_mean_ms() == pytest.approx(7.5)
    assert Counters().compute_mean_ms() is None


def test_knobs_from_a_description_and_to_a_registration() -> None:
    desc = {"batchSize": 8, "minWorkers": 3, "maxBatchDelay": 3}
    assert knobs_of(desc) == Knobs(8, 3, 2000)
    assert knobs_of({"maxBatchDelay": 0}).queue_delay_us == 0
    # TorchServe's 0 does not batch: its window is our delay + 1 ms, rounded up.
    assert delay_ms(0) == 1 and delay_ms(1) == 2 and delay_ms(2000) == 3
    q = register_query("m.mar", Knobs(8, 3, 2000), model_name="m", synchronous=False)
    assert "batch_size=8" in q and "initial_workers=3" in q and "max_batch_delay=3" in q
    assert "synchronous=false" in q and "model_name=m" in q


def _mar(path: Path, version: str) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(MANIFEST, json.dumps({"model": {"modelName": "m", "modelVersion": version}}))
        zf.writestr("handler.py", "def handle(d, c):\n    return d\n")


def test_twin_archive_alternates_versions_and_leaves_the_original(tmp_path: Path) -> None:
    _mar(tmp_path / "m.mar", "1.0")
    before = (tmp_path / "m.mar").read_bytes()
    assert other_version("1.0") == "1.0-b" and other_version("1.0-b") == "1.0"
    twin = twin_archive(tmp_path, "m.mar", "1.0-b")
    assert twin == "m.dnnscaler-v1.0-b.mar"
    assert archive_version(tmp_path / twin) == "1.0-b"
    assert (tmp_path / "m.mar").read_bytes() == before
    with zipfile.ZipFile(tmp_path / twin) as zf:
        assert zf.read("handler.py").startswith(b"def handle")
    # Back from the twin: the original archive is the other version already.
    assert twin_archive(tmp_path, twin, "1.0") == "m.dnnscaler-v1.0.mar"
    assert twin_archive(tmp_path, "m.mar", "1.0") == "m.mar"


def test_limits_file_round_trip_and_a_bad_one_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.dnnscaler.json"
    assert read_limits(path) is None
    limits = DeclaredLimits(64, 4, 20000, 100.0, 16, 1)
    write_limits(path, limits)
    assert read_limits(path) == limits
    path.write_text('{"max_batch_size": 8}')
    with pytest.raises(ArchiveError, match=r"m\.dnnscaler\.json"):
        read_limits(path)


def test_agent_settings_for_torchserve_name_the_field() -> None:
    cfg = AgentConfig(backend="torchserve", torchserve_metrics="")
    assert cfg.torchserve_management.startswith("http://")
    with pytest.raises(InvalidValue, match="torchserve_management"):
        AgentConfig(backend="torchserve", torchserve_management="localhost:8081")
    with pytest.raises(InvalidValue, match="torchserve_metrics"):
        AgentConfig(torchserve_metrics="localhost:8082")
