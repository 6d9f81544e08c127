"""Trace-file parsing for per-request latency, and the pending-requests metric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dnnscaler.agents.backends.triton import parse_pending
from dnnscaler.triton.tracing import TraceReader, percentiles_ms, requests_from_entries


def _trace(tid: int, model: str, start_ns: int, lat_ns: int, grpc: bool = True) -> list[Any]:
    stamps = [("REQUEST_START", start_ns + 100), ("REQUEST_END", start_ns + lat_ns - 100)]
    if grpc:
        stamps += [("GRPC_WAITREAD_END", start_ns), ("GRPC_SEND_END", start_ns + lat_ns)]
    return [{"id": tid, "model_name": model, "model_version": 1}] + [
        {"id": tid, "timestamps": [{"name": n, "ns": ns}]} for n, ns in stamps
    ]


def test_grpc_span_preferred_and_request_span_fallback() -> None:
    entries = _trace(1, "a", 1_000, 5_000_000) + _trace(2, "b", 2_000, 3_000_000, grpc=False)
    done, incomplete = requests_from_entries(entries)
    by_model = {r.model: r for r in done}
    assert incomplete == 0
    assert by_model["a"].latency_ms == pytest.approx(5.0)
    assert by_model["b"].latency_ms == pytest.approx(3.0 - 0.0002)


def test_incomplete_trace_is_counted_not_reported() -> None:
    entries = [{"id": 7, "model_name": "a"}, {"id": 7, "timestamps": [{"name": "X", "ns": 1}]}]
    done, incomplete = requests_from_entries(entries)
    assert done == []
    assert incomplete == 1


def test_reader_consumes_files_in_order_and_retries_partial(tmp_path: Path) -> None:
    prefix = tmp_path / "trace.json"
    (tmp_path / "trace.json.0").write_text(json.dumps(_trace(1, "a", 0, 1_000_000)))
    (tmp_path / "trace.json.1").write_text('[{"id": 2, "model_na')  # still being written
    reader = TraceReader(prefix)
    first = reader.poll()
    assert [r.latency_ms for r in first] == [pytest.approx(1.0)]
    assert not (tmp_path / "trace.json.0").exists()
    assert reader.poll() == []  # partial file retried, not skipped
    (tmp_path / "trace.json.1").write_text(json.dumps(_trace(2, "a", 0, 2_000_000)))
    (tmp_path / "trace.json.10").write_text(json.dumps(_trace(3, "a", 0, 3_000_000)))
    assert [r.latency_ms for r in reader.poll()] == [pytest.approx(2.0), pytest.approx(3.0)]


def test_reader_skips_a_corrupt_file_once_a_later_one_parses(tmp_path: Path) -> None:
    (tmp_path / "t.0").write_text("not json")
    (tmp_path / "t.1").write_text(json.dumps(_trace(1, "a", 0, 4_000_000)))
    reader = TraceReader(tmp_path / "t")
    assert reader.poll() == []
    assert [r.latency_ms for r in reader.poll()] == [pytest.approx(4.0)]


def test_discard_existing(tmp_path: Path) -> None:
    (tmp_path / "t.0").write_text(json.dumps(_trace(1, "a", 0, 4_000_000)))
    reader = TraceReader(tmp_path / "t")
    reader.discard_existing()
    assert reader.poll() == []
    assert not (tmp_path / "t.0").exists()


def test_percentiles() -> None:
    assert percentiles_ms([]) is None
    p50, p95, p99, mean = percentiles_ms([float(i) for i in range(1, 101)]) or (0, 0, 0, 0)
    assert (p50, mean) == (pytest.approx(50.5), pytest.approx(50.5))
    assert p95 == pytest.approx(95.05)
    assert p99 == pytest.approx(99.01)


def test_parse_pending_metric() -> None:
    text = (
        "# HELP nv_inference_pending_request_count x\n"
        'nv_inference_pending_request_count{model="a",version="1"} 3\n'
        'nv_inference_pending_request_count{model="a",version="2"} 1\n'
        'nv_inference_pending_request_count{model="b",version="1"} 0\n'
        'nv_inference_count{model="a",version="1"} 99\n'
    )
    assert parse_pending(text) == {"a": 4, "b": 0}


def test_reader_follows_a_server_restart(tmp_path: Path) -> None:
    reader = TraceReader(tmp_path / "t")
    for i in range(3):
        (tmp_path / f"t.{i}").write_text(json.dumps(_trace(i, "a", 0, 1_000_000)))
    assert len(reader.poll()) == 3
    (tmp_path / "t.0").write_text(json.dumps(_trace(9, "a", 0, 7_000_000)))  # restarted
    assert [r.latency_ms for r in reader.poll()] == [pytest.approx(7.0)]


def test_sampling_traces_about_the_budget_and_flushes_eight_times_a_second() -> None:
    from dnnscaler.triton.tracing import MAX_TRACE_RATE, sampling_settings

    # Under the budget every request is traced; flushes follow the load (x2 hysteresis).
    assert sampling_settings(120.0, 250.0, 1, 20) == {}
    assert sampling_settings(400.0, 250.0, 2, 5) == {"log_frequency": 25}
    # 1,600 rps (resnet_small near its capacity): 1 in 7 traced (~230 a second).
    assert sampling_settings(1600.0, 250.0, 1, 20) == {"trace_rate": 7}
    assert sampling_settings(1600.0, 250.0, 1, 5) == {"trace_rate": 7, "log_frequency": 28}
    # The rate rises at once, and falls only when half of it would do.
    assert sampling_settings(1800.0, 250.0, 7, 28) == {"trace_rate": 8}
    assert sampling_settings(1200.0, 250.0, 8, 28) == {}
    assert sampling_settings(1000.0, 250.0, 8, 28) == {"trace_rate": 4}
    # One quiet window (a reload's) under a recent peak does not lower it (conv run 10:00).
    assert sampling_settings(36.0, 250.0, 3, 23, peak_rps=573.0) == {"log_frequency": 1}
    assert sampling_settings(36.0, 250.0, 3, 23, peak_rps=0.0)["trace_rate"] == 1
    assert sampling_settings(1e9, 250.0, 1, 200)["trace_rate"] == MAX_TRACE_RATE
    # No budget: the server's rate stays; the flushes follow the traced requests.
    assert sampling_settings(1600.0, None, 4, 50) == {}
    assert sampling_settings(1600.0, None, 1, 50) == {"log_frequency": 200}
    # Unknown settings are left alone; no load changes nothing.
    assert sampling_settings(1600.0, 250.0, None, None) == {}
    assert sampling_settings(0.0, 250.0, 8, 28) == {}
