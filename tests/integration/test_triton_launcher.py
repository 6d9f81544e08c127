"""The local Triton launcher: starts, serves, stops clean; the backend sees it go away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from process_support import procs_with

from dnnscaler.agents.backend import BackendUnavailable
from dnnscaler.agents.backends.triton import TritonBackend
from dnnscaler.bench.config import BenchConfig
from dnnscaler.bench.probes import apply_and_wait, open_loop_probe
from dnnscaler.bench.triton_adapter import TRITON, TritonServer
from dnnscaler.core.types import Knobs, Slo
from dnnscaler.triton.demo_models import write_repository
from dnnscaler.triton.install import triton_installed
from dnnscaler.triton.launcher import LocalTriton, TritonStartError, free_port, python_stub_count

pytestmark = [
    pytest.mark.slow,
    pytest.mark.triton,
    pytest.mark.skipif(not triton_installed(), reason="nvidia-pytriton not installed"),
]
PROBE = replace(BenchConfig(), probe_s=1.0, warm_s=0.3)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    write_repository(path, ["echo"])
    return path


def test_serves_then_leaves_no_process_or_shm(repo: Path) -> None:
    with LocalTriton(repo, ["echo"]) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
        data = np.arange(32, dtype=np.float32).reshape(2, 16)
        inp.set_data_from_numpy(data)
        out = client.infer("echo", [inp]).as_numpy("OUTPUT0")
        client.close()
        assert np.array_equal(out, data)
        assert server.shm_files(), "the Python backend should hold shared memory while up"
        assert procs_with(server.shm_prefix), "a stub process should be running"
        prefix = server.shm_prefix
        assert "echo" in server.log_path.read_text()
        workdir = server.workdir
    assert not server.running()
    assert not server.group_alive()
    assert server.shm_files() == []
    assert procs_with(prefix) == []
    assert workdir is not None and not workdir.exists(), "a clean stop removes its temp folder"


def test_start_failure_reports_the_log_and_cleans_up(repo: Path) -> None:
    server = LocalTriton(repo, ["no_such_model"], ready_timeout_s=60)
    with pytest.raises(TritonStartError, match="no_such_model"):
        server.start()
    assert not server.group_alive()
    assert server.shm_files() == []
    # The server died on its own: its folder stays, for the log.
    assert server.workdir is not None
    try:
        assert "no_such_model" in server.log_path.read_text()
    finally:
        shutil.rmtree(server.workdir, ignore_errors=True)


async def test_backend_unavailable_when_triton_is_down(repo: Path) -> None:
    async with LocalTriton(repo, ["echo"]) as server:
        backend = TritonBackend(server.grpc_url, server.metrics_url)
        await backend.start()
        assert [m.name for m in await backend.list_models()] == ["echo"]
        await asyncio.to_thread(server.stop)
        with pytest.raises(BackendUnavailable):
            await backend.observe()
        with pytest.raises(BackendUnavailable):
            await backend.apply("echo", Knobs(max_batch_size=4, instances=1))
        await backend.close()
    assert not server.group_alive()
    assert server.shm_files() == []


async def test_a_reload_is_settled_once_the_old_instances_have_exited(repo: Path) -> None:
    # Triton answers a reload when the new instances are ready and stops the old ones
    # afterwards, one every ~1.5 s: the harness waits for that before it measures.
    async with LocalTriton(repo, ["echo"]) as triton:
        assert triton.pid is not None
        server = TritonServer(
            triton.grpc_url, triton.metrics_url, TritonBackend(triton.grpc_url), triton
        )
        await server.setup.start()
        try:
            for knobs in (Knobs(4, 3, 0), Knobs(8, 1, 0)):
                await apply_and_wait(server.setup, "echo", knobs)
                waited = await server.wait_settled("echo", knobs)
                count = python_stub_count(triton.pid, "echo")
                assert count == knobs.instances, (
                    f"{knobs}: {count} stub processes after waiting {waited:.1f} s;"
                    f" log tail: {triton.log_tail(5)}"
                )
        finally:
            await server.setup.close()


async def test_a_copy_serves_its_own_knobs_beside_the_model(tmp_path: Path) -> None:
    # The convergence test measures its sweep's configs and the ladder's oracle config on
    # copies loaded beside the model, so that no probe follows a reload.
    write_repository(tmp_path / "repo", ["echo"])
    async with LocalTriton(tmp_path / "repo", ["echo"], workdir=tmp_path / "w") as triton:
        assert triton.pid is not None
        server = TritonServer(
            triton.grpc_url, triton.metrics_url, TritonBackend(triton.grpc_url), triton
        )
        await server.setup.start()
        try:
            await server.load_copy("echo", "echo_copy", Knobs(4, 2, 0))
            listed = {m.name: m.knobs for m in await server.setup.list_models()}
            assert listed == {"echo": Knobs(32, 1, 0), "echo_copy": Knobs(4, 2, 0)}, (
                f"log tail: {triton.log_tail(5)}"
            )
            assert python_stub_count(triton.pid, "echo_copy") == 2
            assert python_stub_count(triton.pid, "echo") == 1
            for name in listed:  # both answer
                lat, errors, done = await open_loop_probe(
                    TRITON, server, name, 50.0, Slo(latency_ms=500.0), PROBE, 0
                )
                assert errors == 0 and done > 0 and lat is not None, f"{name}: {errors} errors"
            # Unloaded, its processes gone, before an agent that would steer it starts.
            await server.unload_copies()
            assert python_stub_count(triton.pid, "echo_copy") == 0
            listed = {m.name: m.available for m in await server.setup.list_models()}
            assert listed == {"echo": True, "echo_copy": False}
            fresh = TritonBackend(triton.grpc_url)
            await fresh.start()
            try:
                assert [m.name for m in await fresh.list_models()] == ["echo"]
            finally:
                await fresh.close()
        finally:
            await server.setup.close()


async def test_backend_start_without_server() -> None:
    backend = TritonBackend(f"127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable):
        await backend.start()
    await backend.close()


def _triton_local(tmp_path: Path) -> subprocess.Popen[str]:
    """``dnnscaler triton-local`` serving the echo demo model from ``tmp_path``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dnnscaler.cli",
            "triton-local",
            "--demo",
            "--models",
            "echo",
            "--demo-dir",
            str(tmp_path / "repo"),
            "--workdir",
            str(tmp_path / "w"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    proc = _triton_local(tmp_path)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        client = grpcclient.InferenceServerClient(info["grpc_url"])
        assert client.is_model_ready("echo")
        client.close()
        prefix_procs = [p for p in procs_with(str(tmp_path / "w")) if p != proc.pid]
        assert prefix_procs, "tritonserver should run from the given workdir"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert procs_with(str(tmp_path / "w")) == []


_HUNG_OWNER = """
import sys, time
from pathlib import Path
from dnnscaler.triton.launcher import LocalTriton
t = LocalTriton(sys.argv[1], ["echo"], workdir=Path(sys.argv[2]), exit_timeout_s=1).start()
print("SERVER_PID", t.pid, flush=True)
time.sleep(600)
"""


def test_a_hung_server_is_killed_when_its_owner_is_killed(repo: Path, tmp_path: Path) -> None:
    """A server that ignores its parent-death SIGTERM (stopped here with SIGSTOP, as one hung
    in its model instances) is SIGKILLed with its stubs by the launcher's watchdog, once the
    grace (exit timeout + 5 s) is over. On 12-07 a hung Triton outlived its owner by 67 min."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed: no parent-death signal")
    workdir = tmp_path / "w"
    owner = subprocess.Popen(
        [sys.executable, "-c", _HUNG_OWNER, str(repo), str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    left: list[int] = []
    try:
        assert owner.stdout is not None
        seen = []  # the owner's log lines come first (structlog writes to stdout)
        for line in owner.stdout:
            seen.append(line)
            if line.startswith("SERVER_PID "):
                break
        else:
            raise AssertionError(f"the owner started no server: {''.join(seen)[-2000:]}")
        pid = int(line.split()[1])
        assert pid in procs_with(str(workdir))
        os.kill(pid, signal.SIGSTOP)  # hung: no signal but KILL ends it
        owner.kill()
        owner.wait(timeout=30)
        for _ in range(600):  # the grace is 6 s; bounded at 60 s
            left = procs_with(str(workdir))
            if not left:
                break
            time.sleep(0.1)
        log = (workdir / "tritonserver.log").read_text(errors="replace")[-2000:]
        assert left == [], f"left running after the owner's kill -9: {left}; log: {log}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for pid in procs_with(str(workdir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_server_stops_when_its_owner_is_killed(tmp_path: Path) -> None:
    """kill -9 of the process that started Triton (no cleanup runs) still stops Triton: it
    gets SIGTERM from the kernel (``setpriv --pdeathsig``) and shuts down by itself."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed: no parent-death signal")
    proc = _triton_local(tmp_path)
    try:
        assert proc.stdout is not None
        json.loads(proc.stdout.readline())  # serving
        servers = [p for p in procs_with(str(tmp_path / "w")) if p != proc.pid]
        assert servers, "tritonserver should run from the given workdir"
        proc.kill()
        proc.wait(timeout=30)
        for _ in range(300):  # Triton's exit takes 2-5 s; bounded at 30 s
            left = procs_with(str(tmp_path / "w"))
            if not left:
                break
            time.sleep(0.1)
        log = (tmp_path / "w" / "tritonserver.log").read_text(errors="replace")[-2000:]
        assert left == [], f"left running after the owner's kill -9: {left}; log: {log}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in procs_with(str(tmp_path / "w")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
