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


def test_a_database_of_the_previous_version_is_upgraded_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for sql in MIGRATIONS[0]:  # version 1: settings and loops, no history yet
        db.execute(sql)
    db.execute("INSERT INTO model_settings VALUES ('mnet', 33.0, 95.0, 'dnnscaler', '{}', 0.0)")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    s = StateStore(path)
    assert s.schema_version == SCHEMA_VERSION == 2
    assert s.load_settings()["mnet"].slo == Slo(33.0, 95.0)
    s.add_decision(_decision(1.0))
    assert [d.new_knobs for d in s.history("m")] == [Knobs(2, 1)]


def test_a_newer_schema_is_refused_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 3"):
        StateStore(path)


def test_a_row_that_no_longer_validates_is_an_error_naming_the_model(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO model_settings VALUES ('bad', 1e308, 99.0, 'aimd', '{}', 0.0)")
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
