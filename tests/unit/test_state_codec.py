"""Policy state survives a JSON round trip (what a restarted controller will resume from),
and bad state data is refused with the path to the bad value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_policies_support import sim_observation

from dnnscaler.core.state_codec import from_data, to_data
from dnnscaler.core.types import InvalidValue, Knobs, Observation, Slo
from dnnscaler.policies.dnnscaler_policy import DnnScalerState
from dnnscaler.policies.latency_surface import Surface
from dnnscaler.policies.paper import PaperState, Phase
from dnnscaler.policies.registry import POLICY_NAMES, make_policy
from dnnscaler.sim.profile import shipped_profiles
from dnnscaler.sim.server import SimServer


def _observations(profile: str, windows: int, policy: Any) -> list[tuple[Observation, Any]]:
    """(observation, state before deciding on it) for ``windows`` windows of ``policy``
    on the simulated server, with a load step and an SLO change on the way."""
    prof = shipped_profiles()[profile]
    srv = SimServer(prof, Knobs(prof.max_batch_size, 1, 0), seed=3)
    best = max(prof.throughput_rps(b, n) for b in (1, 8) for n in range(1, prof.max_instances + 1))
    out = []
    state = None
    for i in range(windows):
        srv.set_arrival_rate((0.4 if i < windows // 2 else 0.7) * best)
        srv.advance_to(float(i + 1))
        slo = Slo(prof.default_slo_ms * (1.0 if i < 2 * windows // 3 else 0.5), 99.0)
        obs = sim_observation(srv, prof, slo)
        if state is None:
            state = policy.initial_state(obs)
        out.append((obs, state))
        dec = policy.decide(obs, state)
        state = dec.state
        if dec.knobs != srv.knobs and dec.knobs != srv.pending_knobs:
            srv.set_knobs(dec.knobs)
    return out


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("profile", ["imagenet/Mob-V1-1", "synthetic/batch-vs-mt"])
def test_every_policy_state_round_trips_through_json(name: str, profile: str) -> None:
    policy = make_policy(name)
    for obs, state in _observations(profile, 60, policy)[::7]:
        text = json.dumps(to_data(state))
        restored = from_data(type(state), json.loads(text))
        assert restored == state
        # A policy resumed from the restored state decides exactly as the original would.
        assert policy.decide(obs, restored) == policy.decide(obs, state)


def test_a_field_missing_from_the_data_takes_its_default() -> None:
    data = to_data(DnnScalerState(slo_ms=50.0))
    del data["explored_instances"]
    assert from_data(DnnScalerState, data).explored_instances == 1


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        (lambda d: d.update(bogus=1), "DnnScalerState.bogus"),
        (lambda d: d.update(slo_ms="fast"), "DnnScalerState.slo_ms"),
        (lambda d: d["target"].update(instances=2.5), "DnnScalerState.target.instances"),
        (
            lambda d: d["surface"]["law"].update(knots=[[1.0]]),
            "DnnScalerState.surface.law.knots[0]",
        ),
        (lambda d: d.update(records=[{"max_batch_size": 4}]), "DnnScalerState.records[0]"),
        (lambda d: d.update(in_force_s=True), "DnnScalerState.in_force_s"),
    ],
)
def test_bad_state_data_names_the_path(edit: Any, path: str) -> None:
    data = to_data(DnnScalerState(surface=Surface(), slo_ms=50.0))
    edit(data)
    with pytest.raises(InvalidValue) as err:
        from_data(DnnScalerState, data)
    assert err.value.field == path


def test_an_unknown_enum_value_lists_the_valid_ones() -> None:
    data = to_data(PaperState())
    data["phase"] = "guessing"
    with pytest.raises(InvalidValue, match="probe-base"):
        from_data(PaperState, data)
    data["phase"] = Phase.BATCHING.value
    assert from_data(PaperState, data).phase is Phase.BATCHING


def test_an_observation_with_batch_statistics_round_trips() -> None:
    # Decision traces keep observations, whose batch statistics map batch sizes (integer
    # keys: strings in JSON) to statistics.
    obs, _ = _observations("synthetic/batch-vs-mt", 5, make_policy("dnnscaler"))[-1]
    assert obs.window.batch_stats
    data = json.loads(json.dumps(to_data(obs)))
    assert from_data(Observation, data) == obs
    key = next(iter(data["window"]["batch_stats"]))
    data["window"]["batch_stats"]["eight"] = data["window"]["batch_stats"][key]
    with pytest.raises(InvalidValue, match=r"Observation\.window\.batch_stats: key 'eight'"):
        from_data(Observation, data)
