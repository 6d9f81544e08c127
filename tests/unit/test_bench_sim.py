"""``dnnscaler bench sim --quick`` end to end on two profiles, plus its building blocks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dnnscaler.bench import metrics as m
from dnnscaler.bench.cli import register
from dnnscaler.bench.online import WindowRecord
from dnnscaler.bench.oracle import MeasureSpec, batch_grid, config_capacity, oracle_sweep
from dnnscaler.core.types import Knobs
from dnnscaler.sim.profile import Profile

TWO = "imagenet/Mob-V1-025,synthetic/memory-bound"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dnnscaler")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    rc = _run(["bench", "sim", "--quick", "--models", TWO, "--out", str(out), "--jobs", "2"])
    assert rc == 0
    return json.loads((out / "results.json").read_text()), out


def test_results_json_shape(quick_results: tuple[dict, Path]) -> None:
    doc, out = quick_results
    recs = doc["records"]
    assert {(r["model"], r["policy"]) for r in recs} == {
        (mdl, pol)
        for mdl in TWO.split(",")
        for pol in ("dnnscaler", "paper", "aimd", "static-default", "oracle")
    }
    for r in recs:
        for key in (
            "model",
            "policy",
            "approach",
            "final_knobs",
            "online_capacity_rps",
            "oracle_capacity_rps",
            "ratio_to_oracle",
            "violation_rate",
            "settle_windows",
            "failed_requests",
            "knob_changes",
            "ratio_to_aimd",
            "ratio_to_paper",
        ):
            assert key in r, key
        assert set(r["final_knobs"]) == {"max_batch_size", "instances", "queue_delay_us"}
        assert [s["name"] for s in r["scenarios"]] == ["load-drop", "slo-halved", "interference"]
        assert r["failed_requests"] == 0
        assert 0.0 <= r["violation_rate"] <= 1.0
    assert (out / "capacity.png").stat().st_size > 0
    assert list(out.glob("timeseries_*.png"))


def test_oracle_is_at_least_every_policy(quick_results: tuple[dict, Path]) -> None:
    doc, _ = quick_results
    for r in doc["records"]:
        assert r["oracle_capacity_rps"] > 0
        # Staircase steps are 5 % of the oracle; allow one step plus measurement noise.
        assert r["online_capacity_rps"] <= 1.10 * r["oracle_capacity_rps"], r
    oracle = {r["model"]: r for r in doc["records"] if r["policy"] == "oracle"}
    for mdl, r in oracle.items():
        assert r["ratio_to_oracle"] >= 0.8, mdl


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--models", "nope"], "unknown model 'nope'; valid: "),
        (["--policies", "dnnscaler,bogus"], "unknown policy 'bogus'; valid: dnnscaler"),
    ],
)
def test_bad_names_are_reported(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _run(["bench", "sim", "--quick", "--out", str(tmp_path), *argv]) == 2
    assert needle in capsys.readouterr().out.replace("\n", "")


def test_user_profile_file(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"name": "mine", "lat_k_ms": [4.0, 5.0, 7.0], "batch_alpha": 0.3}]))
    out = tmp_path / "out"
    rc = _run(
        [
            "bench",
            "sim",
            "--quick",
            "--profiles",
            str(f),
            "--policies",
            "oracle,static-default",
            "--out",
            str(out),
            "--slo-ms",
            "30",
        ]
    )
    assert rc == 0
    recs = json.loads((out / "results.json").read_text())["records"]
    assert {r["model"] for r in recs} == {"mine"} and recs[0]["slo_ms"] == 30.0


def test_batch_grid() -> None:
    assert batch_grid(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert batch_grid(24) == [1, 2, 4, 8, 16, 24]


def test_oracle_finds_batching_for_a_batching_friendly_model() -> None:
    p = Profile(name="t", lat_k_ms=(10.0, 19.0, 28.0), batch_alpha=0.05, max_batch_size=16)
    spec = MeasureSpec(warmup_requests=100, measure_requests=600, bisect_steps=5)
    res = oracle_sweep(p, slo_ms=60.0, percentile=99.0, spec=spec)
    assert res.knobs.max_batch_size >= 4
    single, _ = config_capacity(p, Knobs(1, 1, 0), 60.0, 99.0, spec)
    assert res.capacity_rps > 2 * single


def _w(i: int, thr: float, lat: float, slo: float = 10.0) -> WindowRecord:
    return WindowRecord(
        t_s=float(i + 1),
        rate_rps=thr,
        slo_ms=slo,
        completed=int(thr),
        failed=0,
        throughput_rps=thr,
        latency_ms=lat,
        knobs=Knobs(),
        approach="x",
        changed=False,
    )


def test_settle_and_violations() -> None:
    seg = [_w(0, 50, 30), _w(1, 80, 12), _w(2, 100, 9)] + [_w(i, 1000, 5) for i in range(3, 12)]
    assert m.settle_windows(seg) == 5  # 3-window mean throughput needs 3 settled windows
    assert m.violation_rate(seg) == pytest.approx(2 / 12)
    calm = [_w(i, 1000, 5) for i in range(10)]
    assert m.settle_windows(calm) == 0
    blip = [_w(i, 1000, 5) for i in range(9)] + [_w(9, 1000, 50)]
    assert m.settle_windows(blip) == 0  # a late isolated violation is a violation, not unsettled
    flapping = [_w(i, 1000, 50 if i % 3 == 2 else 5) for i in range(12)]
    assert m.settle_windows(flapping) is None


def test_staircase_steps_stretch_for_slow_models() -> None:
    st = m.Staircase(step_windows=10, min_half_requests=1000)
    assert st.for_rate(10_000.0, 1.0).step_windows == 10
    assert st.for_rate(100.0, 1.0).step_windows == 2 * 34
    assert st.for_rate(1.0, 10.0).step_windows == 100


def test_online_capacity_stops_after_two_failures() -> None:
    steps = [
        m.StepResult(r, 1.0, ok)
        for r, ok in [(30, True), (35, True), (40, False), (45, True), (50, False)]
    ]
    steps += [m.StepResult(55, 1.0, False), m.StepResult(60, 1.0, True)]
    assert m.online_capacity(steps) == (45, 3)


def test_low_staircase_gives_weak_policies_a_finite_capacity(
    quick_results: tuple[dict, Path],
) -> None:
    doc, _ = quick_results
    # One instance at the model's max batch cannot carry 30 % of a multi-tenancy-friendly
    # model's oracle capacity: it is measured on the low staircase instead of scoring 0.
    low = {(r["model"], r["policy"]): r for r in doc["records"] if r["low_staircase"]}
    r = low[("imagenet/Mob-V1-025", "aimd")]
    assert 0 < r["online_capacity_rps"] < 0.3 * r["oracle_capacity_rps"]
    assert all(r["online_capacity_rps"] > 0 for r in low.values())
