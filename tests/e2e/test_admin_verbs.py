"""The operator verbs over real gRPC and through the CLI, against a real controller with a
sim agent: pause / resume (a model, an agent), drain, reprofile, history, clear-slo (#15)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, common_pb2

from .conftest import wait_for
from .processes import run_cli

pytestmark = pytest.mark.timeout(180)

AGENT = "node-a-gpu0"


@pytest.fixture
async def served(controller, start_agent):
    await start_agent(controller.address, AGENT, {"inception": ("imagenet/Inc-V1", 40.0)})
    await wait_for(lambda: controller.registry.known_model("inception"))
    return controller


_cli = run_cli


async def _model(admin) -> admin_pb2.ModelStatus:
    return await admin.GetModel(admin_pb2.GetModelRequest(model="inception"))


async def _settled(admin) -> admin_pb2.ModelStatus | None:
    m = await _model(admin)
    return None if m.HasField("pending_knobs") else m


async def _changes_after(admin, n: int) -> bool:
    return (await _model(admin)).knob_changes > n


async def test_pause_holds_the_knobs_and_resume_hands_them_back(served, admin) -> None:
    await wait_for(lambda: _changes_after(admin, 0))  # aimd moves every few windows
    r = await admin.Pause(admin_pb2.PauseRequest(model="inception"))
    assert [m.hold for m in r.models] == ["model paused"]
    # An update already sent still lands; nothing after it.
    held = await wait_for(lambda: _settled(admin))
    await asyncio.sleep(3.0)  # six reports
    now = await _model(admin)
    assert now.knob_changes == held.knob_changes and now.knobs == held.knobs, now
    assert now.last_window.throughput_rps > 0  # still served and observed
    r = await admin.Resume(admin_pb2.PauseRequest(model="inception"))
    assert [m.hold for m in r.models] == [""]
    await wait_for(lambda: _changes_after(admin, now.knob_changes))


async def test_drain_and_pause_of_an_agent_and_resume_ending_both(served, admin) -> None:
    r = await admin.Drain(admin_pb2.DrainRequest(agent_id=AGENT))
    assert r.agents[0].draining and [m.hold for m in r.models] == ["agent draining"]
    r = await admin.Pause(admin_pb2.PauseRequest(agent_id=AGENT))
    assert r.agents[0].paused and r.agents[0].draining  # pausing keeps the drain
    listed = await admin.ListAgents(admin_pb2.ListAgentsRequest())
    assert listed.agents[0].draining
    r = await admin.Resume(admin_pb2.PauseRequest(agent_id=AGENT))
    assert not r.agents[0].paused and not r.agents[0].draining
    assert [m.hold for m in r.models] == [""]


async def test_reprofile_forgets_and_history_tells(served, admin) -> None:
    await wait_for(lambda: _changes_after(admin, 1))
    loop = served.registry.loops_for("inception")[0]
    assert loop.policy_state is not None
    await admin.Reprofile(admin_pb2.ReprofileRequest(model="inception"))
    h = await admin.History(admin_pb2.HistoryRequest(model="inception", limit=10_000))
    causes = [d.cause for d in h.decisions]
    # (The policy may move again between the two calls: it starts afresh.)
    assert causes.count("reprofile") == 1, causes
    at = causes.index("reprofile")
    assert causes[:at].count("policy") >= 2, causes
    moved = [d for d in h.decisions if d.cause == "policy"]
    assert all(d.old_knobs != d.new_knobs and d.agent_id == AGENT for d in moved)
    times = [d.time for d in h.decisions]
    assert times == sorted(times)
    last = await admin.History(admin_pb2.HistoryRequest(model="inception", limit=1))
    assert len(last.decisions) == 1 and last.decisions[0].time >= times[at]
    later = await admin.History(admin_pb2.HistoryRequest(model="inception", since=times[at]))
    assert later.decisions[0].cause == "reprofile" and later.decisions[0].time == times[at]


async def test_clear_slo_and_bad_requests(served, admin) -> None:
    await admin.SetSlo(
        admin_pb2.SetSloRequest(model="inception", slo=common_pb2.Slo(percentile=95, latency_ms=7))
    )
    r = await admin.ClearSlo(admin_pb2.ClearSloRequest(model="inception"))
    assert (r.models[0].slo.latency_ms, r.models[0].slo.percentile) == (100.0, 99.0)
    bad = [
        (admin.Pause(admin_pb2.PauseRequest()), grpc.StatusCode.INVALID_ARGUMENT, "exactly one"),
        (
            admin.Pause(admin_pb2.PauseRequest(model="inception", agent_id=AGENT)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exactly one",
        ),
        (admin.Pause(admin_pb2.PauseRequest(model="nope")), grpc.StatusCode.NOT_FOUND, "nope"),
        (admin.Drain(admin_pb2.DrainRequest(agent_id="ghost")), grpc.StatusCode.NOT_FOUND, "ghost"),
        (admin.Drain(admin_pb2.DrainRequest()), grpc.StatusCode.INVALID_ARGUMENT, "agent_id"),
        (
            admin.Reprofile(admin_pb2.ReprofileRequest(model="nope")),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            admin.History(admin_pb2.HistoryRequest(model="inception", limit=10_001)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit",
        ),
        (
            admin.History(admin_pb2.HistoryRequest(model="inception", since=float("nan"))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "since",
        ),
        (admin.History(admin_pb2.HistoryRequest(model="nope")), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            admin.ClearSlo(admin_pb2.ClearSloRequest(model="nope")),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
    ]
    for call, code, says in bad:
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            await call
        assert ei.value.code() == code and says in (ei.value.details() or ""), ei.value


async def test_cli_verbs(served, admin) -> None:
    addr = ("--controller", served.address)
    await wait_for(lambda: _changes_after(admin, 0))

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(_cli, *args, *addr)

    r = await cli("pause", "inception")
    assert r.returncode == 0 and "model paused" in r.stdout, r.stdout + r.stderr
    r = await cli("resume", "inception", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["models"][0].get("hold", "") == ""
    r = await cli("drain", AGENT)
    assert r.returncode == 0 and "draining" in r.stdout, r.stdout + r.stderr
    r = await cli("resume", "--agent", AGENT, "--json")
    assert r.returncode == 0 and not json.loads(r.stdout)["agents"][0].get("draining")
    r = await cli("reprofile", "inception")
    assert r.returncode == 0, r.stderr
    r = await cli("history", "inception", "--since", "1h", "--json")
    assert r.returncode == 0, r.stderr
    causes = [d["cause"] for d in json.loads(r.stdout)["decisions"]]
    assert "reprofile" in causes and "policy" in causes[: causes.index("reprofile")], causes
    r = await cli("history", "inception", "--limit", "5")
    assert r.returncode == 0 and "reprofile" in r.stdout, r.stdout
    r = await cli("set-slo", "inception", "--latency-ms", "9")
    assert r.returncode == 0, r.stderr
    r = await cli("clear-slo", "inception", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["models"][0]["slo"]["latency_ms"] == 100
    for args, code in [
        (("pause", "ghost"), 3),
        (("drain", "ghost"), 3),
        (("history", "inception", "--limit", "20000"), 2),
        (("history", "inception", "--since", "soon"), 2),  # argparse's own exit code
        (("reprofile", "ghost"), 3),
        (("clear-slo", "ghost"), 3),
    ]:
        r = await cli(*args)
        assert r.returncode == code, (args, r.returncode, r.stderr)
