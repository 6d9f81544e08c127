"""Daemons started from TOML files as systemd starts them (#15): the controller and an agent
read their settings from ``--config FILE`` with environment overrides, `dnnscaler config
check` validates without starting, and a bad file stops a daemon before it serves, with the
field and the file named. Real processes; the agent's GPU is simulated (the only fake)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from dnnscaler.v1 import admin_pb2, admin_pb2_grpc

from .processes import Daemon, free_port, run_cli, wait_for_models

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]


def test_check_accepts_the_shipped_examples_and_shows_where_values_came_from() -> None:
    for name in ("controller", "agent"):
        path = ROOT / "deploy" / "config" / f"{name}.toml"
        r = run_cli("config", "check", str(path), "--no-env")
        assert r.returncode == 0, r.stderr
        assert f"[{name}]  valid" in r.stdout
        r = run_cli("config", "check", str(path), "--json", "--no-env")
        doc = json.loads(r.stdout)
        assert doc["valid"] is True
        settings = doc["daemons"][name]
        key = "listen" if name == "controller" else "backend"
        assert settings[key]["from"] == f"file {path}"
        assert settings["backoff_max_s" if name == "agent" else "grace_s"]["from"] in (
            f"file {path}",
            "default",
        )


def test_check_refuses_a_bad_file_naming_field_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "controller.toml"
    bad.write_text('[controller]\nlisten = "127.0.0.1:1"\ndefault_percentile = 101\n')
    r = run_cli("config", "check", str(bad))
    assert r.returncode == 2
    assert f"{bad} [controller]: default_percentile: must be in [50, 99.999], got 101" in r.stderr
    r = run_cli("config", "check", str(bad), "--json")
    assert r.returncode == 2
    assert json.loads(r.stdout)["field"] == "default_percentile"
    r = run_cli("config", "check", str(tmp_path / "absent.toml"))
    assert r.returncode == 2 and "absent.toml: file: not found" in r.stderr


def test_a_bad_config_stops_the_daemon_before_it_serves(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "controller.toml"
    cfg.write_text(
        f'[controller]\nlisten = "127.0.0.1:{port}"\ninsecure = true\nstale_after_s = -1\n'
    )
    d = Daemon(tmp_path, "controller", "controller", "--config", str(cfg))
    try:
        assert d.proc.wait(30) == 2, d.tail()
    finally:
        d.stop()
    assert f"{cfg} [controller]: stale_after_s: must be > 0" in d.log.read_text(), d.tail()
    # The same file with the value fixed by the environment (systemd's EnvironmentFile=)
    # starts, and serves on the file's port.
    d = Daemon(
        tmp_path,
        "controller-env",
        "controller",
        "--config",
        str(cfg),
        env={"DNNSCALER_STALE_AFTER_S": "10"},
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
    finally:
        d.stop()


def test_controller_and_agent_run_from_their_files(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    db = tmp_path / "state" / "controller.db"
    db.parent.mkdir()
    ctl_cfg = tmp_path / "controller.toml"
    ctl_cfg.write_text(
        "[controller]\n"
        f'listen = "{address}"\n'
        "insecure = true\n"
        f'state_path = "{db}"\n'
        "default_slo_ms = 42.5\n"
        "default_percentile = 95\n"
        "report_interval_s = 0.5\n"
        "stale_after_s = 5\n"
    )
    agent_cfg = tmp_path / "agent.toml"
    agent_cfg.write_text(
        "[agent]\n"
        f'controller = "{address}"\n'
        'agent_id = "from-file"\n'
        'backend = "sim"\n'
        'sim_models = ["alpha=imagenet/Mob-V1-025@60", "beta=imagenet/Inc-V1@20"]\n'
    )
    ctl = Daemon(tmp_path, "controller", "controller", "--config", str(ctl_cfg))
    # The flag beats the file and the variable beats the file: the agent id comes from
    # the environment, the node from the flag.
    agent = Daemon(
        tmp_path,
        "agent",
        "agent",
        "--config",
        str(agent_cfg),
        "--node",
        "flag-node",
        env={"DNNSCALER_AGENT_ID": "from-env"},
    )
    daemons = [ctl, agent]
    try:
        with grpc.insecure_channel(address) as ch:
            stub = admin_pb2_grpc.AdminServiceStub(ch)
            models = wait_for_models(stub, {"alpha", "beta"}, daemons, timeout_s=60)
            for m in models:
                assert (m.slo.latency_ms, m.slo.percentile) == (42.5, 95.0), m
                assert m.agent_id == "from-env", m
            agents = stub.ListAgents(admin_pb2.ListAgentsRequest(), timeout=5).agents
            assert [(a.agent_id, a.node) for a in agents] == [("from-env", "flag-node")]
            # The file's state path is the database in use: a setting lands in it.
            r = run_cli("set-slo", "alpha", "--latency-ms", "30", "--controller", address)
            assert r.returncode == 0, r.stderr
    finally:
        for d in daemons:
            d.stop()
    tails = "\n".join(d.tail() for d in daemons)
    deadline = time.monotonic() + 10
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model FROM model_settings").fetchall()
    assert ("alpha",) in rows, tails
