"""``ForgetAgent`` / ``dnnscaler forget-agent``: an operator drops an agent that is gone.

A lost agent's record and its models' loops are kept for its return (test_agent_kill9), so a
fleet that replaces nodes would grow the controller's registry and state file without end.
Forgetting one removes its record, its loops' stored state and its flags (the decision
history stays); refused while the agent is connected, NOT_FOUND for one not known. The same
id connecting later starts from scratch. Real processes: a controller with a SQLite state
file and a sim agent (its GPU is the only fake).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, admin_pb2_grpc

from .processes import Daemon, controller, free_port, run_cli, sim_agent, until, wait_for_models

pytestmark = pytest.mark.timeout(120)

AGENT, MODEL = "node-f-gpu0", "gone"
SIM_MODEL = f"{MODEL}=imagenet/Inc-V1@60"


def _agents(stub: admin_pb2_grpc.AdminServiceStub) -> dict[str, admin_pb2.AgentStatus]:
    return {a.agent_id: a for a in stub.ListAgents(admin_pb2.ListAgentsRequest(), timeout=5).agents}


def _rows(db: Path, table: str) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:
        return [r for (r,) in ro.execute(f"SELECT agent_id FROM {table}")]


def _code(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_forget_a_lost_agent_and_it_comes_back_fresh(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    address = f"127.0.0.1:{free_port()}"
    ctl = controller(
        tmp_path, address, "--state-path", str(db), "--policy", "aimd",
        "--report-interval-s", "0.5", "--stale-after-s", "2",
    )  # fmt: skip
    agent = sim_agent(tmp_path, address, AGENT, SIM_MODEL)
    again: Daemon | None = None
    channel = grpc.insecure_channel(address)
    stub = admin_pb2_grpc.AdminServiceStub(channel)

    def forget(agent_id: str) -> admin_pb2.ForgetAgentResponse:
        return stub.ForgetAgent(admin_pb2.ForgetAgentRequest(agent_id=agent_id), timeout=5)

    try:
        wait_for_models(stub, {MODEL}, [ctl, agent], timeout_s=30)

        def moved() -> bool:
            ms = stub.ListModels(admin_pb2.ListModelsRequest(model=MODEL), timeout=5).models
            return bool(ms) and ms[0].knob_changes >= 1

        until("a first decision (history to keep)", moved, [ctl, agent])
        stub.Drain(admin_pb2.DrainRequest(agent_id=AGENT), timeout=5)  # a flag row to forget
        until("the loop state is stored", lambda: _rows(db, "loop_state") == [AGENT], [ctl])

        # Connected: refused, nothing changes.
        assert _code(lambda: forget(AGENT)) == grpc.StatusCode.FAILED_PRECONDITION
        assert _code(lambda: forget("ghost")) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: forget("")) == grpc.StatusCode.INVALID_ARGUMENT
        r = run_cli("forget-agent", AGENT, "--controller", address)
        assert r.returncode == 2 and "connected" in r.stderr, r.stderr
        assert _agents(stub)[AGENT].connected and _rows(db, "agent_flags") == [AGENT]

        agent.kill9()
        until("the agent is marked lost", lambda: _agents(stub)[AGENT].lost, [ctl])
        r = run_cli("forget-agent", AGENT, "--controller", address, "--json")
        assert r.returncode == 0, r.stdout + r.stderr + ctl.tail()
        assert '"models": [\n    "gone"\n  ]' in r.stdout, r.stdout

        assert AGENT not in _agents(stub)
        gone = admin_pb2.ListModelsRequest(model=MODEL)
        assert _code(lambda: stub.ListModels(gone, timeout=5)) == grpc.StatusCode.NOT_FOUND
        assert _rows(db, "loop_state") == [] and _rows(db, "agent_flags") == []
        history = stub.History(admin_pb2.HistoryRequest(model=MODEL), timeout=5).decisions
        assert history, "the decision history stays"
        assert _code(lambda: forget(AGENT)) == grpc.StatusCode.NOT_FOUND
        r = run_cli("forget-agent", AGENT, "--controller", address)
        assert r.returncode == 3, r.stderr

        # The same id again: a new agent to the controller (no flags, a loop from scratch,
        # not the kept one put back).
        again = sim_agent(tmp_path, address, AGENT, SIM_MODEL)
        wait_for_models(stub, {MODEL}, [ctl, again], timeout_s=30)
        back = _agents(stub)[AGENT]
        assert back.connected and not back.draining and not back.lost, back
        decisions = stub.History(admin_pb2.HistoryRequest(model=MODEL), timeout=5).decisions
        assert not [d for d in decisions if d.cause == "agent restart"], list(decisions)
    finally:
        channel.close()
        for d in (agent, again, ctl):
            if d is not None:
                d.stop()
