"""``kill -9`` of an agent: the controller marks it lost after ``stale_after_s``, keeps its
models' loops (knobs, policy state, decision count) in memory and in the store, and when the
same agent id comes back it carries on from them: the knobs the policy had reached are put
back on the restarted (simulated) server, and the policy does not start over (#18).

Real processes: a controller with a SQLite state file and a sim agent (its GPU is the only
fake; it lives in the agent process, so the kill also restarts its server at its default
knobs, as a host reboot would).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, admin_pb2_grpc

from .processes import Daemon, controller, free_port, sim_agent, until, wait_for_models

pytestmark = pytest.mark.timeout(120)

AGENT, MODEL = "node-k-gpu0", "kept"
SIM_MODEL = f"{MODEL}=imagenet/Inc-V1@60"
DEFAULT_KNOBS = (1, 1)  # what the restarted sim server starts with


def _model(stub: admin_pb2_grpc.AdminServiceStub) -> admin_pb2.ModelStatus:
    ms = stub.ListModels(admin_pb2.ListModelsRequest(model=MODEL), timeout=5).models
    return next(m for m in ms if m.agent_id == AGENT)


def _agent(stub: admin_pb2_grpc.AdminServiceStub) -> admin_pb2.AgentStatus:
    agents = stub.ListAgents(admin_pb2.ListAgentsRequest(), timeout=5).agents
    return next(a for a in agents if a.agent_id == AGENT)


def _knobs(m: admin_pb2.ModelStatus) -> tuple[int, int]:
    return (m.knobs.max_batch_size, m.knobs.instances)


def _events(log: Path, name: str) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("event") == name:
            out.append(e)
    return out


def test_kill9_of_an_agent_keeps_its_models_and_resumes_them(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    address = f"127.0.0.1:{free_port()}"
    ctl = controller(
        tmp_path,
        address,
        "--state-path",
        str(db),
        "--policy",
        "aimd",
        "--report-interval-s",
        "0.5",
        "--stale-after-s",
        "2",
    )
    agent = sim_agent(tmp_path, address, AGENT, SIM_MODEL)
    again: Daemon | None = None
    channel = grpc.insecure_channel(address)
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    try:
        wait_for_models(stub, {MODEL}, [ctl, agent], timeout_s=30)

        # The policy has moved the knobs away from the server's defaults, and they landed.
        def moved() -> admin_pb2.ModelStatus | None:
            m = _model(stub)
            ok = m.knob_changes >= 1 and not m.HasField("pending_knobs")
            return m if ok and _knobs(m) != DEFAULT_KNOBS else None

        before = until("a first policy move lands", moved, [ctl, agent])

        agent.kill9()
        until("the agent is marked lost", lambda: _agent(stub).lost, [ctl])
        lost = _agent(stub)
        kept = _model(stub)
        tails = ctl.tail()
        assert not lost.connected and lost.models == [MODEL], tails
        assert not kept.available, kept
        assert kept.knob_changes >= before.knob_changes, (kept, before)
        assert [e["agent"] for e in _events(ctl.log, "agent_lost")] == [AGENT], tails
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:
            rows = ro.execute("SELECT model FROM loop_state WHERE agent_id = ?", (AGENT,))
            assert [r for (r,) in rows] == [MODEL]
        at_loss = (_knobs(kept), kept.knob_changes, kept.generation)

        again = sim_agent(tmp_path, address, AGENT, SIM_MODEL)

        # Back: the knobs the policy had reached are put on the fresh server again.
        def back() -> admin_pb2.ModelStatus | None:
            a, m = _agent(stub), _model(stub)
            ok = a.connected and not a.lost and m.available and not m.HasField("pending_knobs")
            return m if ok and m.generation > at_loss[2] else None

        after = until("the agent is back and its knobs restored", back, [ctl, again])
        tails = f"{ctl.tail()}\n{again.tail()}"
        decisions = stub.History(admin_pb2.HistoryRequest(model=MODEL), timeout=5).decisions
        restores = [d for d in decisions if d.cause == "agent restart"]
        assert len(restores) == 1, (list(decisions), tails)
        r = restores[0]
        assert (r.old_knobs.max_batch_size, r.old_knobs.instances) == DEFAULT_KNOBS, r
        assert (r.new_knobs.max_batch_size, r.new_knobs.instances) == at_loss[0], r
        # The same loop carried on: its count of policy moves went on from where it was (a
        # loop made afresh would count from 0), and the policy never decided from the
        # fresh server's defaults (which a policy starting over would do first).
        assert after.knob_changes >= at_loss[1], (after, at_loss)
        later = [d for d in decisions if d.time >= r.time and d.cause == "policy"]
        assert all(
            (d.old_knobs.max_batch_size, d.old_knobs.instances) != DEFAULT_KNOBS for d in later
        ), (list(decisions), tails)
        kept_events = _events(ctl.log, "loop_kept")
        assert [(e["model"], e["restore"] is not None) for e in kept_events] == [(MODEL, True)]
        assert _events(ctl.log, "loop_resume") == [], tails  # not the store's restart path
    finally:
        channel.close()
        for d in (agent, again, ctl):
            if d is not None:
                d.stop()
