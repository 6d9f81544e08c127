"""The controller's durable state: SQLite (stdlib ``sqlite3``), one writer, WAL.

What an operator set (per-model SLO and policy) is written with ``synchronous=FULL`` before
the admin call answers: an acknowledged change survives ``kill -9`` and a power cut. What a
control loop learned (each (agent, model)'s policy state, knobs in force and generation) is
written after every decision with ``synchronous=NORMAL``: in WAL mode that survives the
process being killed, and at worst loses the last windows on a power cut, which the policy
relearns. The decision history is bounded by count and by age.

The schema is versioned (``PRAGMA user_version``); ``MIGRATIONS[i]`` takes a database from
version ``i`` to ``i + 1``, so a database of any earlier version opens and is upgraded in
one transaction. Calls block: they are short (a row each), and the controller is one
process with one connection.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnnscaler.core.state_codec import from_data, to_data
from dnnscaler.core.types import InvalidValue, Knobs, Slo

# Each entry: the statements that take the schema one version up.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: what operators set, and what each control loop learned.
    (
        """CREATE TABLE model_settings (
            model TEXT PRIMARY KEY,
            slo_latency_ms REAL NOT NULL,
            slo_percentile REAL NOT NULL,
            policy TEXT NOT NULL,
            policy_params TEXT NOT NULL,
            updated_at REAL NOT NULL)""",
        """CREATE TABLE loop_state (
            agent_id TEXT NOT NULL,
            model TEXT NOT NULL,
            policy TEXT NOT NULL,
            state TEXT,
            knobs TEXT NOT NULL,
            pending_knobs TEXT,
            generation INTEGER NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (agent_id, model))""",
    ),
    # 1 -> 2: the decision history.
    (
        """CREATE TABLE decisions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            t REAL NOT NULL,
            model TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            old_knobs TEXT NOT NULL,
            new_knobs TEXT NOT NULL,
            approach TEXT NOT NULL,
            reason TEXT NOT NULL,
            cause TEXT NOT NULL)""",
        "CREATE INDEX decisions_by_model ON decisions (model, t)",
    ),
    # 2 -> 3: knob changes stopped by an operator, per model and per agent.
    (
        "ALTER TABLE model_settings ADD COLUMN paused INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE agent_flags (
            agent_id TEXT PRIMARY KEY,
            paused INTEGER NOT NULL,
            draining INTEGER NOT NULL,
            updated_at REAL NOT NULL)""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    """The database cannot be used (newer schema, corrupt file, disk error)."""


@dataclass(frozen=True)
class StoredSettings:
    slo: Slo
    policy: str
    policy_params: dict[str, Any]
    paused: bool = False


@dataclass(frozen=True)
class AgentFlags:
    """An operator stopped knob changes on this agent: paused, or draining for maintenance."""

    paused: bool = False
    draining: bool = False


@dataclass(frozen=True)
class StoredLoop:
    """What one (agent, model)'s control loop had learned when it last decided."""

    agent_id: str
    model: str
    policy: str
    state: Any  # the policy state as ``state_codec.to_data`` data; None before a decision
    knobs: Knobs  # in force, as the agent last reported
    pending_knobs: Knobs | None  # sent, not yet confirmed
    generation: int


@dataclass(frozen=True)
class DecisionRecord:
    t: float  # wall-clock seconds (time.time())
    model: str
    agent_id: str
    old_knobs: Knobs
    new_knobs: Knobs
    approach: str
    reason: str
    cause: str  # "policy", or what else changed the knobs or the loop


def encode_params(params: dict[str, Any]) -> str:
    return json.dumps({k: to_data(v) for k, v in params.items()}, sort_keys=True)


def decode_params(text: str) -> dict[str, Any]:
    """Policy parameters back from JSON; ``knobs`` (the static policy's) is typed."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise InvalidValue("policy_params", f"expected an object, got {text[:64]!r}")
    return {k: from_data(Knobs, v) if k == "knobs" else v for k, v in data.items()}


def _knobs_json(k: Knobs) -> str:
    return json.dumps(to_data(k), sort_keys=True)


def _knobs(text: str) -> Knobs:
    return from_data(Knobs, json.loads(text))


class StateStore:
    """One SQLite database; ``path`` ``":memory:"`` keeps it in memory (tests, no state)."""

    def __init__(
        self,
        path: str | Path,
        *,
        history_max_rows: int = 100_000,
        history_max_age_s: float = 30 * 86400.0,
    ) -> None:
        self.path = str(path)
        self.history_max_rows = history_max_rows
        self.history_max_age_s = history_max_age_s
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"state database {self.path}: {e}") from e
        self._decisions_since_prune = 0

    # -- schema ------------------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"state database {self.path} has schema version {version}; this dnnscaler"
                f" knows up to {SCHEMA_VERSION}: upgrade dnnscaler, or restore a backup"
            )
        if version == SCHEMA_VERSION:
            return
        with self._write(durable=True):
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    self._db.execute(sql)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self, durable: bool) -> Iterator[None]:
        """One transaction; ``durable``: fsync'd (FULL) before it returns."""
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # -- operator settings -------------------------------------------------------------
    def save_settings(self, model: str, s: StoredSettings) -> None:
        """Durable before it returns (an admin call answers after this)."""
        with self._write(durable=True):
            self._db.execute(
                "INSERT OR REPLACE INTO model_settings (model, slo_latency_ms, slo_percentile,"
                " policy, policy_params, updated_at, paused) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    s.slo.latency_ms,
                    s.slo.percentile,
                    s.policy,
                    encode_params(s.policy_params),
                    time.time(),
                    int(s.paused),
                ),
            )

    def delete_settings(self, model: str) -> None:
        with self._write(durable=True):
            self._db.execute("DELETE FROM model_settings WHERE model = ?", (model,))

    def load_settings(self) -> dict[str, StoredSettings]:
        """Every model's settings; a row that no longer validates is an error naming it."""
        out: dict[str, StoredSettings] = {}
        rows = self._db.execute(
            "SELECT model, slo_latency_ms, slo_percentile, policy, policy_params, paused"
            " FROM model_settings ORDER BY model"
        )
        for model, latency_ms, percentile, policy, params, paused in rows:
            try:
                out[model] = StoredSettings(
                    Slo(latency_ms=latency_ms, percentile=percentile),
                    policy,
                    decode_params(params),
                    bool(paused),
                )
            except (InvalidValue, ValueError) as e:
                raise StoreError(f"state database {self.path}: model {model!r}: {e}") from e
        return out

    def save_agent_flags(self, agent_id: str, flags: AgentFlags) -> None:
        """Durable before it returns; an agent with no flag set has no row."""
        with self._write(durable=True):
            if flags == AgentFlags():
                self._db.execute("DELETE FROM agent_flags WHERE agent_id = ?", (agent_id,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO agent_flags VALUES (?, ?, ?, ?)",
                    (agent_id, int(flags.paused), int(flags.draining), time.time()),
                )

    def load_agent_flags(self) -> dict[str, AgentFlags]:
        rows = self._db.execute("SELECT agent_id, paused, draining FROM agent_flags")
        return {a: AgentFlags(bool(p), bool(d)) for a, p, d in rows}

    # -- control loops -----------------------------------------------------------------
    def save_loop(self, loop: StoredLoop) -> None:
        with self._write(durable=False):
            self._db.execute(
                "INSERT OR REPLACE INTO loop_state VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    loop.agent_id,
                    loop.model,
                    loop.policy,
                    None if loop.state is None else json.dumps(loop.state),
                    _knobs_json(loop.knobs),
                    None if loop.pending_knobs is None else _knobs_json(loop.pending_knobs),
                    loop.generation,
                    time.time(),
                ),
            )

    def load_loop(self, agent_id: str, model: str) -> StoredLoop | None:
        row = self._db.execute(
            "SELECT policy, state, knobs, pending_knobs, generation FROM loop_state"
            " WHERE agent_id = ? AND model = ?",
            (agent_id, model),
        ).fetchone()
        if row is None:
            return None
        policy, state, knobs, pending, generation = row
        return StoredLoop(
            agent_id,
            model,
            policy,
            None if state is None else json.loads(state),
            _knobs(knobs),
            None if pending is None else _knobs(pending),
            int(generation),
        )

    def forget_agent(self, agent_id: str) -> list[str]:
        """Delete an agent's loop states and flags (durable before it returns); returns the
        models whose loop state was stored. Its decisions stay in the history."""
        with self._write(durable=True):
            models = [
                m
                for (m,) in self._db.execute(
                    "SELECT model FROM loop_state WHERE agent_id = ? ORDER BY model", (agent_id,)
                )
            ]
            self._db.execute("DELETE FROM loop_state WHERE agent_id = ?", (agent_id,))
            self._db.execute("DELETE FROM agent_flags WHERE agent_id = ?", (agent_id,))
        return models

    # -- decision history --------------------------------------------------------------
    def add_decision(self, d: DecisionRecord) -> None:
        with self._write(durable=False):
            self._db.execute(
                "INSERT INTO decisions (t, model, agent_id, old_knobs, new_knobs, approach,"
                " reason, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.t,
                    d.model,
                    d.agent_id,
                    _knobs_json(d.old_knobs),
                    _knobs_json(d.new_knobs),
                    d.approach,
                    d.reason,
                    d.cause,
                ),
            )
        self._decisions_since_prune += 1
        if self._decisions_since_prune >= 100:
            self.prune(d.t)

    def prune(self, now: float) -> int:
        """Drop history older than the age bound and beyond the newest ``max_rows``."""
        self._decisions_since_prune = 0
        with self._write(durable=False):
            cur = self._db.execute(
                "DELETE FROM decisions WHERE t < ? OR id <= (SELECT MAX(id) FROM decisions) - ?",
                (now - self.history_max_age_s, self.history_max_rows),
            )
        return int(cur.rowcount)

    def history(
        self, model: str, since: float | None = None, limit: int = 100
    ) -> list[DecisionRecord]:
        """``model``'s decisions at or after ``since``, the newest ``limit``, oldest first."""
        rows = self._db.execute(
            "SELECT t, model, agent_id, old_knobs, new_knobs, approach, reason, cause"
            " FROM decisions WHERE model = ? AND t >= ? ORDER BY id DESC LIMIT ?",
            (model, since if since is not None else float("-inf"), limit),
        ).fetchall()
        return [
            DecisionRecord(t, m, a, _knobs(old), _knobs(new), approach, reason, cause)
            for t, m, a, old, new, approach, reason, cause in reversed(rows)
        ]
