"""A fleet across real network boundaries: the controller and two agents each in a Linux
network namespace of their own, joined by veth pairs with addresses from the benchmarking
range 198.18.0.0/15, over mTLS.

It shows: mTLS connects across hosts; knob updates flow; a partition (a link taken down)
is detected by the controller (``stale_after_s``) and by the agent (its stream's
keepalive), the other agent is untouched, and the link coming back heals it on reconnect;
a certificate for another agent and one from another CA are refused.

Needs root and ``ip`` (iproute2); skips with the reason where namespaces are not allowed.
Nothing leaves the namespaces the test makes; they are removed even when it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .processes import Daemon, run_cli, tls_args, tls_sim_agent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PORT = 50051
STALE_AFTER_S = 3.0
KEEPALIVE_S = 1.0
KEEPALIVE_TIMEOUT_S = 2.0
MODEL = "alpha=imagenet/Mob-V1-025@40"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Net:
    """The namespaces: ``ctl`` and one per agent, each agent's link ``ctl-<x>`` <-> ``<x>0``."""

    tag: str
    made: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"dnsc-{role}-{self.tag}"

    def add(self, role: str) -> str:
        name = self.ns(role)
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(self, agent: str, subnet: int) -> tuple[str, str]:
        """A veth pair between the controller's namespace and ``agent``'s, 198.18.<subnet>.1
        (controller side) / .2 (agent side); returns (controller address, agent address)."""
        ctl, other = self.ns("ctl"), self.ns(agent)
        near, far = f"c{agent}{self.tag}"[:15], f"a{agent}{self.tag}"[:15]
        _ip("link", "add", near, "netns", ctl, "type", "veth", "peer", "name", far, "netns", other)
        _ip("-n", ctl, "addr", "add", f"198.18.{subnet}.1/24", "dev", near)
        _ip("-n", other, "addr", "add", f"198.18.{subnet}.2/24", "dev", far)
        _ip("-n", ctl, "link", "set", near, "up")
        _ip("-n", other, "link", "set", far, "up")
        return f"198.18.{subnet}.1", f"198.18.{subnet}.2"

    def set_link(self, agent: str, up: bool) -> None:
        near = f"c{agent}{self.tag}"[:15]
        _ip("-n", self.ns("ctl"), "link", "set", near, "up" if up else "down")

    def remove(self) -> list[str]:
        """Delete every namespace made (their veths go with them); the errors, if any."""
        errors = []
        for name in reversed(self.made):
            r = _ip("netns", "del", name, check=False)
            if r.returncode != 0:
                errors.append(f"{name}: {r.stderr.strip()}")
        self.made.clear()
        return errors


def _namespaces_allowed() -> str | None:
    """None if the test can make namespaces here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"dnsc-probe-{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` is not permitted here: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def net() -> Iterator[Net]:
    why = _namespaces_allowed()
    if why is not None:
        pytest.skip(why)
    n = Net(tag=str(os.getpid() % 100000))
    try:
        yield n
    finally:
        errors = n.remove()
        assert not errors, f"namespaces left behind: {errors}"


def _until(
    what: str, check: Callable[[], bool], timeout_s: float, tails: Callable[[], str]
) -> float:
    """Seconds until ``check()`` held; fails with the daemons' log tails after ``timeout_s``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s\n{tails()}")
        time.sleep(0.2)
    return time.monotonic() - t0


def test_mtls_fleet_across_namespaces_survives_a_partition(net: Net, tmp_path: Path) -> None:
    ctl_ns, a_ns, b_ns = net.add("ctl"), net.add("a"), net.add("b")
    ctl_a, _ = net.link("a", 1)
    ctl_b, _ = net.link("b", 2)
    tls = tmp_path / "tls"
    certs = ["certs", "--out", str(tls), "--host", ctl_a, "--host", ctl_b]
    for agent_id in ("gpu-a", "gpu-b", "gpu-x"):
        certs += ["--agent", agent_id]
    r = run_cli(*certs, "--admin", "ops:rw")
    assert r.returncode == 0, r.stderr
    r = run_cli("certs", "--out", str(tmp_path / "other-ca"), "--agent", "gpu-b")
    assert r.returncode == 0, r.stderr
    daemons: list[Daemon] = []

    def tails() -> str:
        return "\n".join(d.tail(20) for d in daemons)

    def agent(ns: str, name: str, agent_id: str, address: str, cert_dir: Path, cert: str) -> Daemon:
        d = tls_sim_agent(
            tmp_path,
            name,
            f"{address}:{PORT}",
            agent_id,
            tls,
            cert_dir / f"agent-{cert}",
            "--sim-model",
            MODEL,
            "--keepalive-s",
            str(KEEPALIVE_S),
            "--keepalive-timeout-s",
            str(KEEPALIVE_TIMEOUT_S),
            prefix=("ip", "netns", "exec", ns),
        )
        daemons.append(d)
        return d

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        """``dnnscaler ARGS`` as operator ops (rw), inside the controller's namespace."""
        creds = ["--ca", str(tls / "ca.pem"), "--cert", str(tls / "admin-ops.pem")]
        creds += ["--key", str(tls / "admin-ops.key")]
        return run_cli(
            *args,
            "--controller",
            f"127.0.0.1:{PORT}",
            *creds,
            prefix=("ip", "netns", "exec", ctl_ns),
        )

    def status() -> dict[str, dict[str, object]]:
        r = admin("status", "--json")
        if r.returncode != 0:
            return {}
        return {a["agent_id"]: a for a in json.loads(r.stdout)["agents"]}

    def connected(agent_id: str) -> bool:
        return bool(status().get(agent_id, {}).get("connected"))

    try:
        ctl = Daemon(
            tmp_path,
            "controller",
            "controller",
            "--listen",
            f"0.0.0.0:{PORT}",
            *tls_args(tls),
            "--agent-allow",
            "gpu-a",
            "--agent-allow",
            "gpu-b",
            "--report-interval-s",
            "0.5",
            "--stale-after-s",
            str(STALE_AFTER_S),
            "--policy",
            "static",
            prefix=("ip", "netns", "exec", ctl_ns),
        )
        daemons.append(ctl)
        a = agent(a_ns, "agent-a", "gpu-a", ctl_a, tls, "gpu-a")
        agent(b_ns, "agent-b", "gpu-b", ctl_b, tls, "gpu-b")
        _until(
            "both agents connected over mTLS",
            lambda: connected("gpu-a") and connected("gpu-b"),
            60,
            tails,
        )

        # Knob updates flow to an agent in another namespace and are applied there.
        r = admin("set-policy", "alpha", "static", "--max-batch-size", "4", "--instances", "2")
        assert r.returncode == 0, r.stderr

        def applied(agent_id: str) -> bool:
            r = admin("model", "alpha", "--agent", agent_id, "--json")
            knobs = json.loads(r.stdout).get("knobs", {}) if r.returncode == 0 else {}
            return knobs.get("max_batch_size") == 4 and knobs.get("instances") == 2

        _until("gpu-a applied the pinned knobs", lambda: applied("gpu-a"), 60, tails)
        _until("gpu-b applied the pinned knobs", lambda: applied("gpu-b"), 60, tails)

        # A partition: gpu-a's link goes down. The controller drops it after stale_after_s,
        # the agent's keepalive breaks its stream; gpu-b carries on.
        net.set_link("a", up=False)
        lost_s = _until("controller sees gpu-a gone", lambda: not connected("gpu-a"), 30, tails)
        pattern = r"stream_broken|controller_unreachable"
        _until(
            "gpu-a notices the partition",
            lambda: re.search(pattern, a.log.read_text(errors="replace")) is not None,
            30,
            tails,
        )
        assert connected("gpu-b"), tails()
        net.set_link("a", up=True)
        healed_s = _until(
            "gpu-a back after the link returns", lambda: connected("gpu-a"), 60, tails
        )
        assert applied("gpu-a"), tails()  # its knobs survived, nothing re-profiled them away
        print(f"partition noticed by the controller in {lost_s:.1f} s, healed in {healed_s:.1f} s")

        # Wrong certificates: one for another agent id, one from another CA.
        thief = agent(b_ns, "thief", "gpu-a", ctl_b, tls, "gpu-x")
        stranger = agent(b_ns, "stranger", "gpu-b", ctl_b, tmp_path / "other-ca", "gpu-b")
        _until(
            "a certificate for gpu-x claiming gpu-a is refused",
            lambda: "PERMISSION_DENIED" in thief.log.read_text(errors="replace"),
            30,
            tails,
        )
        _until(
            "a certificate from another CA is refused",
            lambda: "controller_unreachable" in stranger.log.read_text(errors="replace"),
            30,
            tails,
        )
        time.sleep(1.0)
        agents = status()
        assert set(agents) == {"gpu-a", "gpu-b"}, agents
        assert all(agents[x].get("connected") for x in ("gpu-a", "gpu-b")), agents
        assert "auth_refused" in ctl.log.read_text(errors="replace"), ctl.tail()
    finally:
        for d in daemons:
            d.stop()
