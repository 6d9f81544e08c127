"""``dnnscaler bench triton`` without servers: option checks, and a failed run or oracle
sweep recorded while the bench goes on (servers, sweeps and staircases are fakes)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dnnscaler.agents.backend import ModelInfo
from dnnscaler.bench import harness, triton_adapter
from dnnscaler.bench import metrics as m
from dnnscaler.bench import triton_bench as tb
from dnnscaler.bench.cli import register
from dnnscaler.bench.config import BenchConfig
from dnnscaler.bench.harness import BenchResult, parse_grid
from dnnscaler.bench.probes import unit_latency_ms
from dnnscaler.bench.report import markdown_tables
from dnnscaler.bench.retries import (
    STALL_WINDOWS,
    UpstreamDefectError,
    describe_error,
    run_error,
    server_stall,
)
from dnnscaler.bench.staircase import OnlineRun
from dnnscaler.bench.sweep import ConfigCapacity, Probe
from dnnscaler.bench.triton_adapter import TRITON, TritonServer
from dnnscaler.core.types import KnobLimits, Knobs
from dnnscaler.triton.launcher import describe_death


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dnnscaler")
    register(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(["bench", "triton", *argv])


# -- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1,4,16x1,2,4", ((1, 4, 16), (1, 2, 4))),
        ("8x2", ((8,), (2,))),
        (" 1, 2 X 3 ", ((1, 2), (3,))),
    ],
)
def test_parse_grid(text: str, want: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    assert parse_grid(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1,2", "expected B1,B2"),
        ("1x2x3", "expected B1,B2"),
        ("", "expected B1,B2"),
        ("ax1", "batch sizes: 'a' is not a positive integer"),
        ("0,4x1", "batch sizes: 0 is not a positive integer"),
        ("1,2x", "no instance counts"),
        ("x1", "no batch sizes"),
        ("1,,2x1", "an empty value"),
        ("1x-1", "instance counts: '-1'"),
        ("1.5x1", "'1.5'"),
    ],
)
def test_parse_grid_rejects(text: str, says: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_grid(text)
    assert says in str(err.value)


@pytest.fixture
def no_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_run_bench(*a: Any, **k: Any) -> Any:
        raise AssertionError("a bad option must stop before the bench starts")

    monkeypatch.setattr(harness, "run_bench", fake_run_bench)


@pytest.mark.usefixtures("no_bench")
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--grid", "1,2"], "bench triton: --grid: expected B1,B2"),
        (["--grid", "ax1"], "bench triton: --grid: batch sizes: 'a'"),
        (["--grid", "0,4x1"], "bench triton: --grid: batch sizes: 0"),
        (["--grid", "1,2x"], "bench triton: --grid: no instance counts"),
        (["--step-frac", "0"], "bench triton: --step-frac: must be in (0, 1]"),
        (["--step-frac", "1.5"], "bench triton: --step-frac: must be in (0, 1]"),
        (["--step-frac", "nan"], "bench triton: --step-frac: must be in (0, 1]"),
        (["--step-windows", "0"], "bench triton: --step-windows: must be at least 1"),
        (["--retries", "-1"], "bench triton: --retries: must be at least 0"),
    ],
)
def test_bad_options_exit_2(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args([*argv, "--out", str(tmp_path)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_options_reach_the_config() -> None:
    args = _args(["--quick", "--grid", "2,8x1,3", "--step-frac", "0.2", "--step-windows", "6"])
    cfg = tb.config_from_args(args)
    assert isinstance(cfg, BenchConfig)
    assert cfg.batch_grid == (2, 8) and cfg.instance_grid == (1, 3)
    assert cfg.staircase.step_frac == 0.2 and cfg.staircase.step_windows == 6
    assert cfg.retries == 1
    no_retry = tb.config_from_args(_args(["--retries", "0"]))
    assert isinstance(no_retry, BenchConfig) and no_retry.retries == 0
    quick = tb.config_from_args(_args(["--quick", "--step-frac", "0.5"]))
    assert isinstance(quick, BenchConfig)
    assert quick.staircase.step_windows == 4  # --quick's own, not the full bench's


# -- failures during the bench -------------------------------------------------------------


class FakeSetup:
    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name, Knobs(1, 1, 0), KnobLimits()) for name in ("serial_io", "wide_mlp")]


class Fakes:
    """Fake servers, sweeps and staircases; ``failing`` policies and models raise."""

    def __init__(
        self,
        failing_policies: Sequence[str] = (),
        failing_oracles: Sequence[str] = (),
        failing_once: Sequence[str] = (),
        slow_oracles: Sequence[str] = (),
    ):
        self.failing_policies = set(failing_policies)
        self.failing_oracles = set(failing_oracles)
        self.slow_oracles = set(slow_oracles)  # every probe over the SLO: capacity 0
        self.failing_once = set(failing_once)  # raise on the first run only
        self.workdirs: list[Path] = []
        self.staircase_calls: list[tuple[str, str]] = []
        self.seen_on_disk: list[list[str]] = []  # policies in results.json when a run starts
        self.out: Path | None = None

    @contextlib.asynccontextmanager
    async def start_server(
        self, repo: Path, models: Sequence[str], workdir: Path
    ) -> AsyncIterator[TritonServer]:
        assert workdir not in self.workdirs, "every server gets its own workdir"
        self.workdirs.append(workdir)
        yield TritonServer(f"fake:{len(self.workdirs)}", None, FakeSetup())

    async def oracle_sweep(
        self, adapter: Any, server: Any, model: str, *a: Any, **k: Any
    ) -> list[ConfigCapacity]:
        if model in self.failing_oracles:
            raise TimeoutError("DEADLINE_EXCEEDED")
        if model in self.slow_oracles:
            k = Knobs(8, 2, 0)
            probes = [Probe(k, r, t, False, 0) for r, t in ((529.0, 182.1), (132.2, 68.0))]
            return [ConfigCapacity(k, 0.0, probes)]
        return [
            ConfigCapacity(Knobs(1, 1, 0), 40.0),
            ConfigCapacity(Knobs(8, 2, 2000), 100.0),
        ]

    async def run_staircase(
        self, adapter: Any, server: Any, model: str, policy: str, start: Knobs,
        *a: Any, **k: Any,
    ) -> OnlineRun:  # fmt: skip
        self.staircase_calls.append((model, policy))
        if self.out is not None and (self.out / "results.json").exists():
            doc = json.loads((self.out / "results.json").read_text())
            self.seen_on_disk.append([r["policy"] for r in doc["records"]])
        if policy in self.failing_policies:
            raise RuntimeError("boom: server went away")
        if policy in self.failing_once:
            self.failing_once.discard(policy)
            raise RuntimeError("boom: server went away")
        steps = [m.StepResult(50.0, 10.0, True), m.StepResult(60.0, 90.0, False)]
        return OnlineRun(policy, [], [], steps, 1, 0, "batching", Knobs(8, 2, 2000))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Where the Triton adapter and the harness look them up.
        monkeypatch.setattr(triton_adapter, "start_server", self.start_server)
        monkeypatch.setattr(harness, "oracle_sweep", self.oracle_sweep)
        monkeypatch.setattr(harness, "run_staircase", self.run_staircase)


POLICIES = ("dnnscaler", "aimd", "static-default", "oracle")


async def test_a_failed_run_is_recorded_and_the_bench_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes = Fakes(failing_policies=["aimd"])
    fakes.install(monkeypatch)
    cfg = tb.quick_config(["serial_io"])
    cfg = replace(cfg, policies=POLICIES)
    progress: list[str] = []
    updates: list[BenchResult] = []
    res = await tb.run_triton_bench(cfg, progress=progress.append, on_update=updates.append)

    assert [r.policy for r in res.records] == list(POLICIES)
    # The failed run is repeated once (retries=1), each time on a fresh server.
    assert fakes.staircase_calls == [
        ("serial_io", p) for p in ("dnnscaler", "aimd", "aimd", "static-default", "oracle")
    ]
    assert len(fakes.workdirs) == 1 + len(POLICIES) + 1
    recs = {r.policy: r for r in res.records}
    bad = recs["aimd"]
    assert bad.online_capacity_rps == 0 and bad.approach == "failed" and bad.attempts == 2
    assert bad.error is not None and "RuntimeError: boom" in bad.error
    assert bad.oracle_capacity_rps == 100.0 and bad.ratio_to_oracle == 0.0
    for pol in ("dnnscaler", "static-default", "oracle"):
        assert recs[pol].error is None and recs[pol].online_capacity_rps == 50.0
        assert recs[pol].ratio_to_aimd is None  # no ratio to a failed run's capacity 0
    assert set(res.runs) == {("serial_io", p) for p in POLICIES if p != "aimd"}
    assert res.errors == [
        {
            "model": "serial_io",
            "policy": "aimd",
            "stage": f"staircase attempt {k}",
            "error": bad.error,
        }
        for k in (1, 2)
    ]
    assert any("aimd" in s and "FAILED RuntimeError: boom" in s for s in progress)
    assert [len(u.records) for u in updates] == [1, 2, 3, 4]


async def test_a_run_that_fails_once_is_repeated_and_the_repeat_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fakes = Fakes(failing_once=["dnnscaler"])
    fakes.install(monkeypatch)
    cfg = replace(tb.quick_config(["serial_io"]), policies=("dnnscaler",))
    res = await tb.run_triton_bench(cfg)
    (rec,) = res.records
    assert rec.error is None and rec.attempts == 2 and rec.online_capacity_rps == 50.0
    assert [e["stage"] for e in res.errors] == ["staircase attempt 1"]
    assert "dnnscaler: measured on attempt 2" in markdown_tables(res.records)
    # Without retries the first failure stands.
    fakes = Fakes(failing_once=["dnnscaler"])
    fakes.install(monkeypatch)
    res = await tb.run_triton_bench(replace(cfg, retries=0))
    (rec,) = res.records
    assert rec.error is not None and rec.attempts == 1 and rec.online_capacity_rps == 0


async def test_a_failed_oracle_sweep_skips_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = Fakes(failing_oracles=["serial_io"])
    fakes.install(monkeypatch)
    cfg = replace(tb.quick_config(["serial_io", "wide_mlp"]), policies=("dnnscaler", "aimd"))
    res = await tb.run_triton_bench(cfg)
    assert [(r.model, r.policy) for r in res.records] == [
        ("wide_mlp", "dnnscaler"),
        ("wide_mlp", "aimd"),
    ]
    assert list(res.oracles) == ["wide_mlp"]
    assert len(res.errors) == 1
    e = res.errors[0]
    assert (e["model"], e["policy"], e["stage"]) == ("serial_io", None, "oracle")
    assert e["error"] == "TimeoutError: DEADLINE_EXCEEDED"


def test_cmd_triton_writes_partial_reports_and_marks_failures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes = Fakes(failing_policies=["aimd"])
    fakes.out = tmp_path
    fakes.install(monkeypatch)
    pols = "dnnscaler,aimd,static-default"
    args = _args(["--quick", "--models", "serial_io", "--policies", pols, "--out", str(tmp_path)])
    assert args.func(args) == 1  # the report is complete, but a run failed
    # Each run started with the previous runs already on disk.
    # (aimd's repeat starts before its record exists: a run is recorded once, when final.)
    assert fakes.seen_on_disk == [["dnnscaler"], ["dnnscaler"], ["dnnscaler", "aimd"]]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["complete"] is True
    recs = {r["policy"]: r for r in doc["records"]}
    assert recs["aimd"]["online_capacity_rps"] == 0
    assert "RuntimeError: boom" in recs["aimd"]["error"]
    assert recs["aimd"]["violation_rate"] is None
    assert recs["dnnscaler"]["error"] is None
    assert [e["policy"] for e in doc["errors"]] == ["aimd", "aimd"]
    assert "aimd FAILED: RuntimeError: boom" in (tmp_path / "tables.md").read_text()
    assert (tmp_path / "capacity.png").exists()
    assert "FAILED serial_io aimd" in capsys.readouterr().out


class FakeTriton:
    """Fake ``LocalTriton`` (no server): running, or exited on SIGSEGV."""

    def __init__(self, running: bool) -> None:
        self._running = running

    def death_note(self, lines: int = 3) -> str | None:
        return (
            None if self._running else describe_death(-11, "I1 loaded\nSignal (11) received.\n\n")
        )


def test_error_descriptions() -> None:
    alive = TritonServer("u", None, FakeSetup(), FakeTriton(running=True))
    assert alive.death_note() is None
    dead = TritonServer("u", None, FakeSetup(), FakeTriton(running=False))
    note = dead.death_note()
    assert note == (
        "tritonserver is no longer running (exit code -11; log tail: I1 loaded | Signal (11)"
        " received.)"
    )
    exc = RuntimeError("first line\nsecond line")
    exc.add_note(note)
    text = describe_error(exc)
    assert text.startswith("RuntimeError: first line | second line | tritonserver is no")
    assert "\n" not in text
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert len(describe_error(ValueError("x" * 5000))) == 800


def test_server_stall_is_noted_only_for_a_long_silence_under_load() -> None:
    from dnnscaler.bench.online import WindowRecord

    def w(t: float, rate: float, done: int) -> WindowRecord:
        return WindowRecord(t, rate, 50.0, done, 0, float(done), None, Knobs(8, 2), "x", False)

    serving = [w(float(t), 300.0, 300) for t in range(10)]
    assert server_stall(serving) is None
    short = serving + [w(10.0 + t, 300.0, 0) for t in range(STALL_WINDOWS - 1)] + serving
    assert server_stall(short) is None
    idle = [w(float(t), 0.0, 0) for t in range(10)]  # nothing offered: no stall
    assert server_stall(idle) is None
    hung = serving + [w(10.0 + t, 300.0, 0) for t in range(STALL_WINDOWS)]
    note = server_stall(hung)
    assert note is not None and "t=10s" in note and "b8" in note.replace("max_batch_size=", "b")


def test_a_server_death_too_late_for_the_stall_rule_is_still_the_runs_error() -> None:
    from dnnscaler.bench.online import WindowRecord

    def w(t: float, done: int) -> WindowRecord:
        return WindowRecord(t, 300.0, 50.0, done, 0, float(done), None, Knobs(8, 2), "x", False)

    serving = [w(float(t), 300) for t in range(10)]
    assert run_error(serving, None) is None
    # Run 6 (resnet_small): the server crashed in the last two windows.
    crashed = serving + [w(10.0 + t, 0) for t in range(2)]
    note = run_error(crashed, "tritonserver is no longer running (log tail: Signal (11))")
    assert note is not None and note.startswith("server died during the run: tritonserver")
    hung = serving + [w(10.0 + t, 0) for t in range(STALL_WINDOWS)]
    stall = run_error(hung, "tritonserver is no longer running")
    assert stall is not None and stall.startswith("server stalled")  # the first fault found
    # Failed requests that were all Triton's own defect make the run one to repeat.
    defect = run_error(serving, None, "Triton 2.51 answered INVALID_ARGUMENT ...")
    assert defect is not None and defect.startswith("failed requests were a server defect")


def test_a_step_whose_tail_is_shed_arrivals_fails_without_a_warning() -> None:
    # Arrivals shed past the in-flight bound count as infinitely late; a percentile that
    # lands between two of them is inf - inf in numpy's interpolation (nan, and a warning).
    import warnings

    import numpy as np

    from dnnscaler.bench.online import WindowRecord

    st = m.Staircase(step_windows=2, min_half_requests=0)
    ws = [
        WindowRecord(float(i), 100.0, 50.0, 10, 0, 10.0, 20.0, Knobs(1, 1, 0), "", False)
        for i in range(2)
    ]
    lats = [np.full(10, 20.0), np.concatenate([np.full(5, 20.0), np.full(5, np.inf)])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (step,) = m.step_results(st, ws, lats, 99.0)
    assert not step.passed and step.latency_ms == float("inf")


class _DefectProbe:
    """Fake ``LoadGen`` (no server): one request of 467 failed by Triton's own defect."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    async def __aenter__(self) -> _DefectProbe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def run_for(self, seconds: float) -> Any:
        return argparse.Namespace(latency_p50_ms=2.7, errors=1, completed=466)

    def upstream_defect(self) -> str | None:
        return "Triton 2.51 answered INVALID_ARGUMENT for an input the request carried"

    def error_report(self) -> str:
        return "t=1.16s: INVALID_ARGUMENT input 'INPUT0' does not exist in request"


async def test_a_speed_probe_failed_by_tritons_defect_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dnnscaler.loadgen.generator as generator

    monkeypatch.setattr(generator, "LoadGen", _DefectProbe)
    with pytest.raises(UpstreamDefectError, match=r"Triton's own defect: Triton 2\.51"):
        await unit_latency_ms(TRITON, TritonServer("u", None, FakeSetup()), "wide_mlp")


async def test_an_oracle_sweep_without_capacity_skips_the_model_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fresh clone 62: every probe of the one config over the SLO, capacity 0, and the bench
    # went on to staircases at 0 rps, "complete" with no error.
    fakes = Fakes(slow_oracles=["serial_io"])
    fakes.install(monkeypatch)
    cfg = replace(tb.quick_config(["serial_io", "wide_mlp"]), policies=("dnnscaler",))
    res = await tb.run_triton_bench(cfg)
    assert [(r.model, r.policy) for r in res.records] == [("wide_mlp", "dnnscaler")]
    assert ("serial_io", "dnnscaler") not in fakes.staircase_calls
    assert list(res.oracles) == ["serial_io", "wide_mlp"]  # its probes stay in the report
    [e] = res.errors
    assert (e["model"], e["policy"], e["stage"]) == ("serial_io", None, "oracle")
    assert e["error"].startswith("NoCapacityError: serial_io: no config of the grid met the SLO")
    assert "b8 n2: p99 68.0 ms at 132 rps" in e["error"] and "--slo-ms" in e["error"]
