"""The agent's TorchServe backend against a real TorchServe (Java frontend, Python workers).

One server per module (``wide_mlp`` and ``echo`` from the demo archives). Every test that
sends load prints the failed requests with their times and the server's log tail on
failure, never a bare count.

The latency test compares like with like without statistics: the burst's requests are all
in one agent window and one client window (no sampling on either side: the access log
has a line per request), so the two percentile samples are over the same requests, and a
client's time contains the server's, request by request. Order statistics keep that
order, so the agent's p99 lies below the client's, up to the log's 1 ms resolution. The
independent server-side check is TorchServe's own counters: their mean over the same
requests equals the access log's mean within that resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from dnnscaler.agents.backends.torchserve import TorchServeBackend
from dnnscaler.core.types import Knobs
from dnnscaler.loadgen import LoadGen
from dnnscaler.torchserve.access_log import parse_line
from dnnscaler.torchserve.archives import (
    MANIFEST,
    build_demo_store,
    other_version,
)
from dnnscaler.torchserve.install import torchserve_installed
from dnnscaler.torchserve.launcher import LocalTorchServe, group_members

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]

MODEL = "wide_mlp"
SHAPE = (512,)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not torchserve_installed():
        pytest.skip("TorchServe or Java 17 not installed (pip install 'dnnscaler[torchserve]')")
    path = tmp_path_factory.mktemp("model_store")
    build_demo_store(path, [MODEL, "echo"])
    return path


@pytest.fixture(scope="module")
def ts_server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTorchServe]:
    server = LocalTorchServe(store, [MODEL, "echo"], workdir=tmp_path_factory.mktemp("ts"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def backend(ts_server: LocalTorchServe, store: Path) -> AsyncIterator[TorchServeBackend]:
    be = TorchServeBackend(
        ts_server.management_url,
        ts_server.metrics_url,
        access_log=ts_server.access_log,
        model_store=store,
        register_timeout_s=25.0,
    )
    await be.start()
    try:
        yield be
    finally:
        await be.close()


def _describe(server: LocalTorchServe, model: str) -> list[dict]:
    with urllib.request.urlopen(f"{server.management_url}/models/{model}/all", timeout=10) as r:
        return list(json.loads(r.read()))


def _why(server: LocalTorchServe, gen: LoadGen | None = None) -> str:
    parts = []
    if gen is not None:
        parts.append(f"client errors: {gen.error_report()}")
        parts.append(f"client snapshot: {gen.snapshot()}")
    parts.append(f"server log tail:\n{server.log_tail(20)}")
    return "\n".join(parts)


async def _back_to(backend: TorchServeBackend, knobs: Knobs) -> None:
    out = await backend.apply(MODEL, knobs)
    assert out.ok and out.knobs_in_force == knobs, out


async def test_knobs_applied_and_read_back(
    backend: TorchServeBackend, ts_server: LocalTorchServe
) -> None:
    target = Knobs(max_batch_size=8, instances=2, queue_delay_us=2000)
    out = await backend.apply(MODEL, target)
    assert out.ok, out.error
    assert out.knobs_in_force == target
    info = {m.name: m for m in await backend.list_models()}[MODEL]
    assert info.knobs == target
    # Read back independently, from the management API itself.
    versions = _describe(ts_server, MODEL)
    assert len(versions) == 1, versions  # the old version is gone
    v = versions[0]
    # TorchServe's batch window is our delay + 1 ms (its 0 does not batch: launcher.delay_ms)
    assert (v["batchSize"], v["minWorkers"], v["maxBatchDelay"]) == (8, 2, 3)
    assert sum(w["status"] == "READY" for w in v["workers"]) == 2
    # Knobs outside the declared limits are refused before the server is touched.
    from dnnscaler.agents.backend import KnobRejected

    with pytest.raises(KnobRejected, match="max_batch_size"):
        await backend.apply(MODEL, Knobs(max_batch_size=1000, instances=1))
    await _back_to(backend, Knobs(16, 1, 0))


async def test_no_failed_request_across_reconfigurations(
    backend: TorchServeBackend,
    ts_server: LocalTorchServe,
    record_property: object,
) -> None:
    """Five batch-size changes (version swaps) and five worker changes each way (in place
    up, swap down) under open-loop load: not one request fails."""
    plan = [
        Knobs(16, 2, 0),  # up (in place)
        Knobs(16, 1, 0),  # down (swap)
        Knobs(8, 1, 0),  # batch (swap)
        Knobs(8, 2, 0),  # up
        Knobs(8, 1, 0),  # down
        Knobs(4, 1, 0),  # batch
        Knobs(4, 3, 0),  # up
        Knobs(4, 2, 0),  # down
        Knobs(16, 2, 2000),  # batch and delay
        Knobs(16, 3, 2000),  # up
        Knobs(16, 1, 2000),  # down
        Knobs(8, 1, 0),  # batch
        Knobs(8, 2, 0),  # up
        Knobs(8, 1, 0),  # down
        Knobs(16, 1, 0),  # batch
    ]
    kinds = {"batch": 0, "up": 0, "down": 0}
    prev = Knobs(16, 1, 0)
    await _back_to(backend, prev)
    async with LoadGen(
        ts_server.inference_url, MODEL, rate_rps=120, protocol="torchserve", input_shape=SHAPE
    ) as gen:
        await asyncio.sleep(1.0)
        for knobs in plan:
            if knobs.max_batch_size != prev.max_batch_size:
                kinds["batch"] += 1
            elif knobs.instances > prev.instances:
                kinds["up"] += 1
            else:
                kinds["down"] += 1
            out = await backend.apply(MODEL, knobs)
            assert out.ok and out.knobs_in_force == knobs, f"{out}\n{_why(ts_server, gen)}"
            prev = knobs
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
    snap = gen.snapshot()
    record_property("reconfigurations", json.dumps(kinds))
    record_property("requests", snap.completed)
    record_property("failed_requests", snap.errors)
    assert min(kinds.values()) >= 5, kinds
    assert snap.errors == 0, _why(ts_server, gen)
    assert snap.completed > 0.8 * 120 * 10, _why(ts_server, gen)


def _broken_twin(store: Path, version: str) -> None:
    """The twin archive for ``version``, with a handler that cannot load."""
    src = store / f"{MODEL}.mar"
    dst = store / f"{MODEL}.dnnscaler-v{version}.mar"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == MANIFEST:
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version
                data = json.dumps(manifest).encode()
            elif item.filename == "dnnscaler_handler.py":
                data = b"def handle(data, context):\n    raise RuntimeError('broken on purpose')\n"
            zout.writestr(item, data)


async def test_failed_registration_keeps_the_old_version_serving(
    backend: TorchServeBackend, ts_server: LocalTorchServe, store: Path
) -> None:
    await _back_to(backend, Knobs(16, 1, 0))
    current = _describe(ts_server, MODEL)[0]["modelVersion"]
    twin = other_version(current)
    _broken_twin(store, twin)
    backend.register_timeout_s = 8.0
    try:
        async with LoadGen(
            ts_server.inference_url, MODEL, rate_rps=60, protocol="torchserve", input_shape=SHAPE
        ) as gen:
            await asyncio.sleep(0.5)
            out = await backend.apply(MODEL, Knobs(8, 1, 0))
            await asyncio.sleep(1.0)
        assert not out.ok
        assert "keeps serving" in out.error, out.error
        assert out.knobs_in_force == Knobs(16, 1, 0)
        versions = _describe(ts_server, MODEL)
        assert [v["modelVersion"] for v in versions] == [current], versions
        assert gen.snapshot().errors == 0, _why(ts_server, gen)
        info = {m.name: m for m in await backend.list_models()}[MODEL]
        assert "last apply failed" in info.message
    finally:
        (store / f"{MODEL}.dnnscaler-v{twin}.mar").unlink(missing_ok=True)
        backend.register_timeout_s = 25.0
    # The next change writes a good twin and succeeds.
    await _back_to(backend, Knobs(8, 1, 0))
    await _back_to(backend, Knobs(16, 1, 0))


async def test_agent_p99_is_the_access_log_and_within_the_client(
    backend: TorchServeBackend,
    ts_server: LocalTorchServe,
    record_property: object,
) -> None:
    await _back_to(backend, Knobs(8, 2, 0))
    await backend.observe()  # the window starts here
    log_start = ts_server.access_log.stat().st_size
    async with LoadGen(
        ts_server.inference_url, MODEL, rate_rps=150, protocol="torchserve", input_shape=SHAPE
    ) as gen:
        gen.window()
        await asyncio.sleep(6.0)
        gen.set_rate(0)
        for _ in range(100):  # the burst ends: every request answered
            if gen.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        client = gen.window()
    await asyncio.sleep(0.3)  # the frontend has logged the last responses
    window = {w.info.name: w.window for w in await backend.observe()}[MODEL]
    why = f"agent {window}\nclient {client}\n{_why(ts_server, gen)}"
    assert client.errors == 0 and window.failed == 0, why
    assert window.completed == client.completed > 500, why
    # 1. The agent computes what the log says (the test parses the same lines itself).
    with open(ts_server.access_log, "rb") as fh:
        fh.seek(log_start)
        lines = fh.read().decode().splitlines()
    records = [r for r in map(parse_line, lines) if r is not None and r.model == MODEL]
    logged = np.array([r.latency_ms for r in records if r.ok])
    assert len(logged) == window.completed, why
    assert window.latency_p99_ms == pytest.approx(float(np.percentile(logged, 99))), why
    # 2. Independent, inside the server: the counters' mean over the same requests.
    assert window.latency_mean_ms is not None
    assert abs(window.latency_mean_ms - float(logged.mean())) <= 1.0, why
    # 3. Within the client's: same requests, each client time contains the server's.
    assert window.latency_p99_ms is not None and client.latency_p99_ms is not None
    assert window.latency_p99_ms <= client.latency_p99_ms + 1.0, why
    record_property("agent_p99_ms", window.latency_p99_ms)
    record_property("client_p99_ms", client.latency_p99_ms)
    record_property("client_path_at_p99_ms", client.latency_p99_ms - window.latency_p99_ms)
    record_property("counter_minus_log_mean_ms", window.latency_mean_ms - float(logged.mean()))


def _cli_env(path: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = path
    env.pop("JAVA_HOME", None)
    return env


def test_local_launcher_stops_clean_and_names_missing_java(tmp_path: Path) -> None:
    if not torchserve_installed():
        pytest.skip("TorchServe or Java 17 not installed")
    exe = [
        str(Path(sys.executable).parent / "dnnscaler"),
        "--log-json",
        "torchserve-local",
        "--demo",
    ]
    # No Java on PATH: a clear error, exit 1, nothing started.
    venv_bin = str(Path(sys.executable).parent)
    done = subprocess.run(
        [*exe, "--models", "echo", "--demo-dir", str(tmp_path / "store0")],
        env=_cli_env(venv_bin),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Java is not installed" in done.stderr, done.stderr
    # With Java: serves, then SIGINT stops the frontend and every worker.
    proc = subprocess.Popen(
        [*exe, "--models", "echo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        body = np.ones(16, dtype="<f4").tobytes()
        req = urllib.request.Request(
            f"{info['inference_url']}/predictions/echo",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.read() == body
        java = int(info["pid"])
        store, workdir = Path(info["model_store"]), Path(info["workdir"])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    deadline = time.monotonic() + 10
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_members(proc.pid), f"left running: {group_members(proc.pid)}"
    assert not Path(f"/proc/{java}").exists() or "Z" in Path(f"/proc/{java}/stat").read_text()
    assert not store.exists(), f"demo archives left in {store}"
    assert not workdir.exists(), f"work folder left: {workdir}"


def _pgid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[2])


def _cmdlines(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        text = raw.replace(b"\0", b" ").decode(errors="replace")
        out.append(f"{pid}: {text[:120]}")
    return out


def test_server_stops_when_its_owner_is_killed(tmp_path: Path) -> None:
    """kill -9 of the process that started TorchServe (no cleanup runs) still stops the
    Java frontend and its workers: the watcher in the server's process group
    (``owner_watch_prefix``) signals the group once the owner is gone. Before it, the
    frontend outlived its owner (the launcher does not pass signals on)."""
    if not torchserve_installed():
        pytest.skip("TorchServe or Java 17 not installed")
    workdir = tmp_path / "w"
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dnnscaler"),
            "--log-json",
            "torchserve-local",
            "--demo",
            "--models",
            "echo",
            "--demo-dir",
            str(tmp_path / "store"),
            "--workdir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    group = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "no output"
        java = int(json.loads(line)["pid"])
        group = _pgid(java)
        assert group != proc.pid, "the server runs in a process group of its own"
        assert len(group_members(group)) >= 3, _cmdlines(group_members(group))
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60  # TERM at once (1 s poll), KILL 10 s later
        while group_members(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = group_members(group)
        log = workdir / "torchserve.out"
        tail = log.read_text(errors="replace")[-1500:] if log.is_file() else "(no console log)"
        assert left == [], (
            f"left running after the owner's kill -9: {_cmdlines(left)}; console: {tail}"
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
