"""``kill -9`` of the controller, then a restart on the same state database: what operators
set (an SLO, a pinned config, a pause) is still in force, and each model's control carries
on where it was (#15).

Real processes: the controller (twice) and a sim agent (its GPU is simulated: the only
fake), the CLI for the admin calls, and the SQLite file read back at the end.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, admin_pb2_grpc

from .processes import Daemon, controller, free_port, run_cli, sim_agent, wait_for_models

pytestmark = pytest.mark.timeout(300)

TUNED, PINNED = "tuned", "pinned"
SETTLED_POLLS = 20  # knobs unchanged over this many polls, POLL_S apart: settled
POLL_S = 0.5


def _cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--controller", address)


def _models(stub: admin_pb2_grpc.AdminServiceStub) -> dict[str, admin_pb2.ModelStatus]:
    return {m.model: m for m in stub.ListModels(admin_pb2.ListModelsRequest(), timeout=5).models}


def _knobs(m: admin_pb2.ModelStatus) -> tuple[int, int]:
    return (m.knobs.max_batch_size, m.knobs.instances)


def _settle(
    stub: admin_pb2_grpc.AdminServiceStub, daemons: list[Daemon], timeout_s: float = 90
) -> dict[str, admin_pb2.ModelStatus]:
    """Poll until every model's knobs held ``SETTLED_POLLS`` polls and nothing is pending."""
    deadline = time.monotonic() + timeout_s
    history: list[dict[str, tuple[int, int]]] = []
    while True:
        models = _models(stub)
        history.append({name: _knobs(m) for name, m in models.items()})
        quiet = not any(m.HasField("pending_knobs") for m in models.values())
        if (
            quiet
            and len(history) >= SETTLED_POLLS
            and all(h == history[-1] for h in history[-SETTLED_POLLS:])
        ):
            return models
        tails = "\n".join(d.tail() for d in daemons)
        assert time.monotonic() < deadline, f"never settled: {history[-12:]}\n{tails}"
        time.sleep(POLL_S)


def _events(log: Path, name: str) -> list[dict[str, object]]:
    """A daemon's structured log events called ``name``."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def _records(db: Path, model: str) -> int:
    """Configs the model's stored policy state has measured (``DnnScalerState.records``):
    a policy that started over would have fewer than before the kill."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:
        (state,) = ro.execute("SELECT state FROM loop_state WHERE model = ?", (model,)).fetchone()
    return len(json.loads(state)["records"])


def _resumes(log: Path) -> dict[str, str]:
    """The restarted controller's ``loop_resume`` outcomes, by model."""
    return {str(e["model"]): str(e["outcome"]) for e in _events(log, "loop_resume")}


def test_kill9_and_restart_keep_settings_and_resume_each_loop(tmp_path: Path) -> None:
    db = tmp_path / "state" / "controller.db"
    address = f"127.0.0.1:{free_port()}"
    args = ("--state-path", str(db), "--policy", "dnnscaler", "--report-interval-s", "0.5")
    first = controller(tmp_path, address, *args)
    agent = sim_agent(
        tmp_path,
        address,
        "node-a-gpu0",
        f"{TUNED}=imagenet/Mob-V1-1@150",
        f"{PINNED}=imagenet/Inc-V1@40",
    )
    second: Daemon | None = None
    channel = grpc.insecure_channel(address)
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    try:
        wait_for_models(stub, {TUNED, PINNED}, [first, agent], timeout_s=60)
        r = _cli(address, "set-slo", TUNED, "--latency-ms", "500", "--percentile", "95")
        assert r.returncode == 0, r.stderr
        r = _cli(
            address, "set-policy", PINNED, "static", "--max-batch-size", "4", "--instances", "2"
        )
        assert r.returncode == 0, r.stderr
        # Pause only once the pin is in force: a pause before the next report holds the
        # knobs where they were (clean-clone run of 6cd5bbc: settled at b1 n1).
        deadline = time.monotonic() + 30
        while _knobs(_models(stub)[PINNED]) != (4, 2):
            assert time.monotonic() < deadline, f"pin never in force:\n{first.tail()}"
            time.sleep(POLL_S)
        r = _cli(address, "pause", PINNED)
        assert r.returncode == 0, r.stderr
        # Settled, and the policy has measured more than the config it started at (else a
        # restart that re-profiled would look the same). Its first move can take longer
        # than one settling period (one run in ~10 here settled before it): wait for both.
        deadline = time.monotonic() + 90
        while True:
            before = _settle(stub, [first, agent])
            measured = _records(db, TUNED)
            if measured >= 2:
                break
            assert time.monotonic() < deadline, (
                f"the policy measured {measured} configs in 90 s:\n{first.tail()}"
            )
        assert _knobs(before[PINNED]) == (4, 2)

        first.kill9()  # no goodbye: whatever was acknowledged must already be on disk
        second = controller(tmp_path, address, *args, name="controller-2")
        after = {m.model: m for m in wait_for_models(stub, {TUNED, PINNED}, [second, agent], 60)}
        tails = f"{second.tail()}\n{agent.tail()}"
        # What operators set is in force.
        assert (after[TUNED].slo.latency_ms, after[TUNED].slo.percentile) == (500, 95), tails
        assert after[PINNED].policy == "static" and _knobs(after[PINNED]) == (4, 2), tails
        assert (after[TUNED].hold, after[PINNED].hold) == ("", "model paused"), tails
        # Each loop carried on from its stored state, and the restart changed no knob.
        held = _settle(stub, [second, agent])
        moves = [
            (e["model"], e["max_batch_size"], e["instances"], e["reason"])
            for e in _events(second.log, "knob_update")
        ]
        for name in (TUNED, PINNED):
            why = (name, _knobs(before[name]), _knobs(held[name]), moves, _resumes(second.log))
            assert _knobs(held[name]) == _knobs(before[name]), why
            assert held[name].knob_changes == 0, why
            assert held[name].generation >= before[name].generation, tails
        assert _resumes(second.log) == {TUNED: "resumed", PINNED: "resumed"}, tails
        # What it had measured is still there: nothing was profiled again.
        assert _records(db, TUNED) >= measured, tails
    finally:
        channel.close()
        agent.stop()
        for d in (first, second):
            if d is not None:
                d.stop()
    # The history on disk holds the policy's moves from before the kill, and nothing the
    # restart caused.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as ro:
        causes = {c for (c,) in ro.execute("SELECT cause FROM decisions")}
    assert causes <= {"policy"}, causes
