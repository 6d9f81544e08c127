"""Latency profiles: the batching law, shipped data, and clear errors for bad files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from dnnscaler.sim.profile import (
    Profile,
    ProfileError,
    load_profiles,
    save_profiles,
    shipped_profiles,
)


def test_batching_law_and_roofline() -> None:
    p = Profile(name="t", lat_k_ms=(10.0, 12.0), batch_alpha=0.1, max_batch_size=8)
    assert p.latency_ms(1, 1) == 10.0 and p.latency_ms(1, 2) == 12.0
    assert p.latency_ms(8, 1) == pytest.approx(17.0)
    # Roofline: two instances at batch 8 cannot beat 1.1 x the best single-knob throughput.
    best_single = max(p.throughput_rps(8, 1), p.throughput_rps(1, 2))
    assert p.throughput_rps(8, 2) <= 1.1 * best_single + 1e-9
    assert p.throughput_rps(8, 2) > best_single


def test_shipped_profiles_cover_csv_and_stress_cases() -> None:
    ps = shipped_profiles()
    assert len(ps) >= 22
    assert "imagenet/Mob-V1-025" in ps and "dhf1k/DeePVS" in ps
    assert ps["imagenet/Mob-V1-025"].lat_k_ms[5] == pytest.approx(4.895)
    assert ps["synthetic/memory-bound"].max_instances == 3
    assert ps["synthetic/video-large"].lat_k_ms[0] >= 1000
    nm = ps["synthetic/non-monotone"].lat_k_ms
    assert any(b < a for a, b in itertools.pairwise(nm))
    # (a) batching wins at a loose SLO, instances at a tight one.
    a = ps["synthetic/batch-vs-mt"]
    tight = a.lat_k_ms[0] * 1.2
    best_mt = max(k * 1000 / lk for k, lk in enumerate(a.lat_k_ms, 1) if lk <= tight)
    best_b = max(
        b * 1000 / a.latency_ms(b, 1)
        for b in range(1, a.max_batch_size + 1)
        if a.latency_ms(b, 1) <= tight
    )
    assert best_mt > best_b
    assert a.throughput_rps(a.max_batch_size, 1) > max(
        k * 1000 / lk for k, lk in enumerate(a.lat_k_ms, 1)
    )


def test_roundtrip_through_a_file(tmp_path: Path) -> None:
    ps = shipped_profiles()
    f = tmp_path / "p.json"
    save_profiles(ps.values(), f)
    assert load_profiles(f) == ps


def _write(tmp_path: Path, data: object) -> Path:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    return f


GOOD = {"name": "m", "lat_k_ms": [5.0, 6.0], "batch_alpha": 0.2}


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([{k: v for k, v in GOOD.items() if k != "batch_alpha"}], r"'m'\).*batch_alpha: missing"),
        ([{**GOOD, "lat_k_ms": []}], r"'m'\).*lat_k_ms: empty"),
        ([{**GOOD, "lat_k_ms": [5.0, -1.0]}], r"'m'\).*lat_k_ms\[k=2\]: must be > 0"),
        ([{**GOOD, "lat_k_ms": [5.0, "x"]}], r"lat_k_ms\[k=2\]: not a number"),
        ([{**GOOD, "max_batch_size": 0}], r"max_batch_size"),
        ([{**GOOD, "colour": 1}], r"colour: unknown field"),
        ([GOOD, GOOD], r"profile #1 .*duplicate"),
        ([], r"non-empty list"),
        ({"name": "m"}, r"non-empty list"),
    ],
)
def test_bad_files_name_file_profile_and_field(tmp_path: Path, data: object, needle: str) -> None:
    f = _write(tmp_path, data)
    with pytest.raises(ProfileError, match=needle) as exc:
        load_profiles(f)
    assert str(f) in str(exc.value)


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "x.json"
    f.write_text("[{")
    with pytest.raises(ProfileError, match=r"x.json: invalid JSON at line 1"):
        load_profiles(f)
    with pytest.raises(ProfileError, match="cannot read"):
        load_profiles(tmp_path / "missing.json")


def test_batching_slopes_match_the_published_series() -> None:
    from dnnscaler.sim.calibration import SERIES, fit_alpha, relative_errors
    from dnnscaler.sim.profile import FAMILY_BATCH_ALPHA

    for s in SERIES:
        used = FAMILY_BATCH_ALPHA[s.family]
        errs = relative_errors(s, used)
        assert errs[1] == 0.0
        if "T4" in s.setup and s.family == "Res":
            continue  # a second GPU for ResNet-50, shown in docs/sim.md as a cross-check
        assert used == pytest.approx(fit_alpha(s), rel=0.05), s.network
        assert max(abs(e) for e in errs.values()) < 0.30, s.network


def test_the_generalisation_set_loads_and_covers_its_kinds() -> None:
    """The held-out profiles of #19 (docs/sim.md, "Generalisation") are a valid file."""
    from importlib import resources

    from dnnscaler.sim.profile import load_profiles

    ref = resources.files("dnnscaler.sim").joinpath("profiles/generalisation.json")
    with resources.as_file(ref) as path:
        ps = load_profiles(path)
    assert len(ps) == 9 and all(n.startswith("gen/") for n in ps)
    assert max(p.jitter_cv for p in ps.values()) >= 1.0  # heavy-tailed
    assert ps["gen/memory-capped"].max_instances == 2
    assert ps["gen/crossover-tight"].slo_ms == 24.0
