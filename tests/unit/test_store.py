"""The controller's state store (real SQLite files): round trips, durability across a
reopen, the previous schema version upgraded, retention, and bad databases refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dnnscaler.controller.config import ControllerConfig
from dnnscaler.controller.model_loop import ModelLoop
from dnnscaler.controller.registry import ModelSettings, Registry
from dnnscaler.controller.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AgentFlags,
    DecisionRecord,
    StateStore,
    StoredLoop,
    StoredSettings,
    StoreError,
)
from dnnscaler.core.state_codec import to_data
from dnnscaler.core.types import KnobLimits, Knobs, Slo
from dnnscaler.policies.aimd import AimdState


def _decision(t: float, model: str = "m", new: int = 2) -> DecisionRecord:
    return DecisionRecord(t, model, "a0", Knobs(1, 1), Knobs(new, 1), "batching", "why", "policy")


def test_settings_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = StateStore(path)
    s.save_settings("mnet", StoredSettings(Slo(33.0, 95.0), "dnnscaler", {}))
    s.save_settings("pinned", StoredSettings(Slo(50.0, 99.0), "static", {"knobs": Knobs(4, 2)}))
    s.close()
    again = StateStore(path)
    got = again.load_settings()
    assert got["mnet"] == StoredSettings(Slo(33.0, 95.0), "dnnscaler", {})
    assert got["pinned"].policy_params == {"knobs": Knobs(4, 2)}
    assert again.schema_version == SCHEMA_VERSION


def test_a_registry_restores_settings_and_writes_through(tmp_path: Path) -> None:
    config = ControllerConfig(state_path=str(tmp_path / "state.db"))
    reg = Registry(config)
    reg.put_settings("mnet", ModelSettings(Slo(33.0, 95.0), "paper"))
    reg.store.close()
    assert Registry(config).settings_for("mnet") == ModelSettings(Slo(33.0, 95.0), "paper")


def test_loop_state_round_trips(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db")
    loop = StoredLoop("a0", "m", "aimd", to_data(AimdState()), Knobs(8, 2), Knobs(16, 2), 7)
    s.save_loop(loop)
    assert s.load_loop("a0", "m") == loop
    assert s.load_loop("a0", "other") is None


KNOBS_1 = '{"instances": 1, "max_batch_size": 1, "queue_delay_us": 0}'
KNOBS_4 = '{"instances": 1, "max_batch_size": 4, "queue_delay_us": 0}'


def _old_database(path: Path, version: int) -> None:
    """A database as dnnscaler with schema ``version`` left it, with a model's settings."""
    db = sqlite3.connect(path)
    for statements in MIGRATIONS[:version]:
        for sql in statements:
            db.execute(sql)
    db.execute(
        "INSERT INTO model_settings (model, slo_latency_ms, slo_percentile, policy,"
        " policy_params, updated_at) VALUES ('mnet', 33.0, 95.0, 'dnnscaler', '{}', 0.0)"
    )
    if version >= 2:
        db.execute(
            "INSERT INTO decisions (t, model, agent_id, old_knobs, new_knobs, approach, reason,"
            " cause) VALUES (5.0, 'mnet', 'a0', ?, ?, 'batching', 'why', 'policy')",
            (KNOBS_1, KNOBS_4),
        )
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_database_of_an_earlier_version_is_upgraded_and_keeps_its_rows(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "old.db"
    _old_database(path, version)
    s = StateStore(path)
    assert s.schema_version == SCHEMA_VERSION == 3
    got = s.load_settings()["mnet"]
    assert got.slo == Slo(33.0, 95.0) and not got.paused  # a column added since: its default
    if version >= 2:
        assert [d.new_knobs for d in s.history("mnet")] == [Knobs(4, 1)]
    s.add_decision(_decision(6.0, model="mnet"))
    s.save_agent_flags("a0", AgentFlags(draining=True))
    assert s.load_agent_flags() == {"a0": AgentFlags(draining=True)}


def test_pause_and_agent_flags_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = StateStore(path)
    s.save_settings("m", StoredSettings(Slo(33.0, 95.0), "aimd", {}, paused=True))
    s.save_agent_flags("a0", AgentFlags(paused=True))
    s.save_agent_flags("a1", AgentFlags(paused=True, draining=True))
    s.save_agent_flags("a1", AgentFlags())  # resumed: no row left
    s.close()
    again = StateStore(path)
    assert again.load_settings()["m"].paused
    assert again.load_agent_flags() == {"a0": AgentFlags(paused=True)}


def test_a_newer_schema_is_refused_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        StateStore(path)


def test_a_row_that_no_longer_validates_is_an_error_naming_the_model(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO model_settings (model, slo_latency_ms, slo_percentile, policy,"
        " policy_params, updated_at) VALUES ('bad', 1e308, 99.0, 'aimd', '{}', 0.0)"
    )
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"'bad'.*latency_ms"):
        StateStore(path).load_settings()


def test_history_is_bounded_by_count_and_age(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state.db", history_max_rows=5, history_max_age_s=100.0)
    for i in range(12):
        s.add_decision(_decision(1000.0 + i, new=i + 1))
    assert len(s.history("m", limit=100)) == 12  # pruned every 100 decisions, or on demand
    s.prune(now=1011.0)
    kept = s.history("m", limit=100)
    assert [d.new_knobs.max_batch_size for d in kept] == [8, 9, 10, 11, 12]
    s.prune(now=1000.0 + 108.5)  # older than 100 s: 1000 + 7 and before
    assert [d.t for d in s.history("m")] == [1009.0, 1010.0, 1011.0]
    assert [d.t for d in s.history("m", since=1010.0)] == [1010.0, 1011.0]
    assert [d.t for d in s.history("m", limit=1)] == [1011.0]


def _loop(knobs: Knobs, policy: str = "aimd") -> ModelLoop:
    return ModelLoop("a0", "m", knobs, KnobLimits(), generation=3, policy_name=policy)


def test_a_loop_resumes_its_policy_state_when_the_agent_agrees() -> None:
    state = AimdState()
    stored = StoredLoop("a0", "m", "aimd", to_data(state), Knobs(8, 1), None, 9)
    loop = _loop(Knobs(8, 1))
    assert loop.resume(stored) == "resumed"
    assert loop.policy_state == state and loop.generation == 9
    # The update it had sent had landed: the agent's knobs are the pending ones.
    stored = StoredLoop("a0", "m", "aimd", to_data(state), Knobs(8, 1), Knobs(16, 1), 10)
    assert _loop(Knobs(16, 1)).resume(stored) == "resumed"


def test_the_agents_knobs_win_over_the_stored_ones() -> None:
    stored = StoredLoop("a0", "m", "aimd", to_data(AimdState()), Knobs(8, 1), None, 9)
    loop = _loop(Knobs(2, 2))
    outcome = loop.resume(stored)
    assert "the agent's win" in outcome and loop.policy_state is None
    assert loop.generation == 9  # generations never go back


def test_a_state_of_another_policy_or_unreadable_is_not_taken() -> None:
    stored = StoredLoop("a0", "m", "paper", to_data(AimdState()), Knobs(8, 1), None, 9)
    assert "policy 'paper'" in _loop(Knobs(8, 1)).resume(stored)
    bad = StoredLoop("a0", "m", "aimd", {"bogus": 1}, Knobs(8, 1), None, 9)
    loop = _loop(Knobs(8, 1))
    assert "unreadable" in loop.resume(bad) and loop.policy_state is None


def test_forgetting_an_agent_drops_its_loops_and_flags_not_others_or_history(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path / "s.db")
    for agent, model in (("a0", "m"), ("a0", "n"), ("a1", "m")):
        store.save_loop(StoredLoop(agent, model, "aimd", None, Knobs(8, 1), None, 1))
    store.save_agent_flags("a0", AgentFlags(paused=True))
    store.save_agent_flags("a1", AgentFlags(draining=True))
    store.add_decision(_decision(1.0))
    registry = Registry(ControllerConfig(), store=store)
    assert registry.forget_agent("a0") == ["m", "n"]
    assert store.load_loop("a0", "m") is None and store.load_loop("a1", "m") is not None
    assert store.load_agent_flags() == {"a1": AgentFlags(draining=True)}
    assert "a0" not in registry.agent_flags
    assert len(store.history("m")) == 1
    assert registry.forget_agent("a0") is None  # known nowhere any more
