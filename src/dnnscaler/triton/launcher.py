"""Start and stop a local ``tritonserver`` (from the nvidia-pytriton wheel) on loopback.

One ``LocalTriton`` is one server process in its own process group, with its own work
folder (backend dir, log file, trace files) and its own shared-memory prefix so that a
clean stop can be verified: after ``stop`` no process of the group is alive and no
``/dev/shm`` file with our prefix is left (leftovers are removed and logged).

Request tracing (TIMESTAMPS, every request, flushed every ``trace_log_frequency`` traces
to ``trace_file.N``) is on by default: the agent's Triton backend reads it for the
per-window latency percentiles (see docs/triton.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from dnnscaler.core.logging import get_logger
from dnnscaler.triton.install import TritonInstall, find_triton

log = get_logger(__name__)

SHM_DIR = Path("/dev/shm")


class TritonStartError(RuntimeError):
    """The server exited or did not become ready; the message quotes its log's tail."""


@dataclass(frozen=True)
class Ports:
    grpc: int
    http: int
    metrics: int


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def describe_death(returncode: int | None, log_tail: str) -> str:
    """One line on a server that is no longer running: its exit code and log tail."""
    tail = " | ".join(x.strip() for x in log_tail.splitlines() if x.strip())
    code = f"exit code {returncode}" if returncode is not None else "exit code unknown"
    return f"tritonserver is no longer running ({code}; log tail: {tail or '(empty)'})"


def die_with_parent_prefix() -> list[str]:
    """A command prefix that gives the server SIGTERM when the thread that spawned it exits.

    A test runner or script killed without cleanup then does not leave an orphan server
    (and its stubs and shared memory) behind: Triton shuts down on SIGTERM by itself.
    util-linux's ``setpriv --pdeathsig`` sets it and execs, so the PID stays the server's.
    It replaces a ``preexec_fn`` calling prctl: Python code between fork and exec runs the
    interpreter's at-fork handlers in the child, and gRPC's (the controller and agent in
    the same process) crashed it with SIGSEGV before exec (``tritonserver exited with
    -11`` and an empty log, in the flake gate's first run on 12-03). Without setpriv: no
    prefix.
    """
    tool = shutil.which("setpriv")
    return [tool, "--pdeathsig", "TERM"] if tool else []


# The watchdog (``sh``): on its own parent-death SIGTERM, SIGTERM the server, wait up to
# the grace for it to exit, then SIGKILL its whole process group (the server leads it, its
# stubs are in it). It exits by itself once the server is gone.
_WATCHDOG = """
pid=$1; grace=$2; pause=""
stop() {
  [ -n "$pause" ] && kill "$pause" 2>/dev/null
  kill -TERM "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt "$grace" ]; do sleep 1; i=$((i+1)); done
  kill -s KILL -- "-$pid" 2>/dev/null
  exit 0
}
trap stop TERM
while kill -0 "$pid" 2>/dev/null; do sleep 5 & pause=$!; wait "$pause"; done
"""


def start_watchdog(pid: int, grace_s: int) -> subprocess.Popen[bytes] | None:
    """A process that, when the thread that started it exits, makes sure server ``pid``
    and its process group follow within ``grace_s`` (None without ``setpriv``).

    The server's own parent-death SIGTERM is not enough: a server hung in its model
    instances ignores it. On 12-07 a Triton 2.51 that had hung in a measuring script
    outlived the script by 67 minutes (and took a core), until it was killed by hand.
    """
    prefix = die_with_parent_prefix()
    if not prefix:
        return None
    return subprocess.Popen(
        [*prefix, "sh", "-c", _WATCHDOG, "dnnscaler-triton-watchdog", str(pid), str(grace_s)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in a terminal's group: only the parent's death ends it
    )


STUB_NAME = "triton_python_backend_stub"
PROC = Path("/proc")


def python_stub_count(parent_pid: int, model: str, proc: Path = PROC) -> int | None:
    """How many Python-backend stub processes of ``model`` the server ``parent_pid`` runs
    (one per instance, and one per old instance until it has exited); ``None`` where
    ``/proc`` cannot be read.

    A stub's command line is ``<stub> <repo>/<model>/<version>/model.py ...``. Triton
    answers a reload once the new instances are ready and then stops the old ones one by
    one, each in about 1.5 s and with a burst of CPU as its Python exits (0.3-0.5 CPU-s
    for ``resnet_small`` on the 2-core box, 12-07): on a host CPU, load measured meanwhile
    is not what the new config carries.
    """
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    count = 0
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) < 2 or fields[1] != str(parent_pid) or len(argv) < 2:
            continue
        if not argv[0].decode(errors="replace").endswith(STUB_NAME):
            continue
        if Path(argv[1].decode(errors="replace")).parent.parent.name == model:
            count += 1
    return count


class LocalTriton:
    """A local Triton server; use ``with``/``async with`` or ``start()``/``stop()``.

    ``models`` are loaded at start (explicit model-control mode); others in the repository
    can be loaded later through the client API. Ports left ``None`` are picked free.
    ``exit_timeout_s`` is how long Triton waits for in-flight work on SIGTERM (a model
    whose reload failed can hold it that long); ``stop_timeout_s`` is when we SIGKILL.
    ``trace_rate`` N traces one request in N (tracing costs server CPU at saturation).
    """

    def __init__(
        self,
        model_repo: str | Path,
        models: Sequence[str] = (),
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        workdir: str | Path | None = None,
        trace: bool = True,
        trace_log_frequency: int = 20,
        trace_rate: int = 1,
        ready_timeout_s: float = 120.0,
        stop_timeout_s: float = 20.0,
        exit_timeout_s: int = 10,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        install: TritonInstall | None = None,
    ) -> None:
        self.model_repo = Path(model_repo).resolve()
        self.models = list(models)
        self._want_ports = (grpc_port, http_port, metrics_port)
        self._own_workdir = workdir is None
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.trace = trace
        self.trace_log_frequency = trace_log_frequency
        self.trace_rate = trace_rate
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = max(stop_timeout_s, exit_timeout_s + 5.0)
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self._install = install
        self.shm_prefix = f"dnnscaler_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.ports: Ports | None = None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: BinaryIO | None = None
        self._pgid: int | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # -- addresses -------------------------------------------------------------------
    def _p(self) -> Ports:
        if self.ports is None:
            raise RuntimeError("server not started")
        return self.ports

    @property
    def grpc_url(self) -> str:
        """``host:port`` as tritonclient.grpc expects it."""
        return f"127.0.0.1:{self._p().grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self._p().http}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self._p().metrics}/metrics"

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("server not started")
        return self.workdir / "tritonserver.log"

    @property
    def trace_file(self) -> Path | None:
        """Prefix of the trace files (Triton writes ``<prefix>.0``, ``<prefix>.1``, ...)."""
        if self.workdir is None or not self.trace:
            return None
        return self.workdir / "trace.json"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def old_instances_running(self, model: str, instances: int) -> bool:
        """Whether processes of ``model``'s old instances are still exiting after a reload
        to ``instances`` (Python-backend models; others have no processes of their own)."""
        if self.pid is None or not self.running():
            return False
        count = python_stub_count(self.pid, model)
        return count is not None and count > instances

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def death_note(self, lines: int = 3) -> str | None:
        """A line on how the server ended, with its log's last ``lines`` lines; None while
        it runs (or before it was started)."""
        if self._proc is None or self.running():
            return None
        return describe_death(self.returncode, self.log_tail(lines))

    def answers(self, timeout_s: float = 10.0) -> bool:
        """Whether the server runs and answers its liveness check within ``timeout_s``: a
        process that runs but answers nothing is hung (the Triton 2.51 tracing hang)."""
        return self.running() and _http_ok(f"{self.http_url}/v2/health/live", timeout_s)

    @property
    def returncode(self) -> int | None:
        """The server's exit code once it exited by itself (a crash: negative signal);
        ``None`` while it runs or when not started."""
        return self._proc.poll() if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> LocalTriton:
        """Start the server and wait until it and the requested models are ready."""
        install = self._prepare()
        for attempt in range(1, self._attempts() + 1):
            try:
                self._spawn(install)
                self._wait_ready_or_stop()
                return self
            except TritonStartError as exc:
                if not self._retry(exc, attempt):
                    raise
        raise AssertionError("unreachable")

    async def start_async(self) -> LocalTriton:
        """``start`` for event loops: spawns in the loop's thread, waits off the loop."""
        install = self._prepare()
        for attempt in range(1, self._attempts() + 1):
            try:
                self._spawn(install)
                await asyncio.to_thread(self._wait_ready_or_stop)
                return self
            except TritonStartError as exc:
                if not self._retry(exc, attempt):
                    raise
            except BaseException:  # cancelled while waiting: leave nothing behind
                await asyncio.to_thread(self.stop)
                raise
        raise AssertionError("unreachable")

    def _prepare(self) -> TritonInstall:
        if self._proc is not None:
            raise RuntimeError("already started")
        return self._install or find_triton()

    def _attempts(self) -> int:
        return 1 if all(p is not None for p in self._want_ports) else 3

    def _retry(self, exc: TritonStartError, attempt: int) -> bool:
        """Retry only a port clash on ports we picked ourselves."""
        if "address already in use" not in str(exc).lower() or attempt >= self._attempts():
            return False
        log.warning("triton.port_clash_retry", attempt=attempt)
        return True

    def _wait_ready_or_stop(self) -> None:
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _spawn(self, install: TritonInstall) -> None:
        g, h, m = self._want_ports
        self.ports = Ports(g or free_port(), h or free_port(), m or free_port())
        if self._workdir_arg is not None:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="dnnscaler-triton-"))
        backend_dir = install.assemble_backend_dir(self.workdir / "backends")
        args = [
            *die_with_parent_prefix(),
            str(install.binary),
            f"--model-repository={self.model_repo}",
            "--model-control-mode=explicit",
            f"--backend-directory={backend_dir}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            "--allow-cpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--exit-timeout-secs={max(0, int(self.exit_timeout_s))}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.trace and self.trace_file is not None:
            args += [
                "--trace-config=level=TIMESTAMPS",
                f"--trace-config=rate={self.trace_rate}",
                "--trace-config=count=-1",
                f"--trace-config=triton,file={self.trace_file}",
                f"--trace-config=triton,log-frequency={self.trace_log_frequency}",
            ]
        args += [f"--load-model={name}" for name in self.models]
        args += self.extra_args
        log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_fh = log_fh
        self._proc = subprocess.Popen(
            args,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=install.environment(),
            cwd=self.workdir,
            start_new_session=True,
        )
        self._pgid = self._proc.pid
        # Triton's own exit on SIGTERM waits up to exit_timeout_s for in-flight work.
        self._watchdog = start_watchdog(self._proc.pid, int(self.exit_timeout_s) + 5)
        log.info(
            "triton.starting",
            pid=self._proc.pid,
            grpc=self.grpc_url,
            repo=str(self.model_repo),
            models=self.models,
            log=str(self.log_path),
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        urls = [f"{self.http_url}/v2/health/ready"]
        urls += [f"{self.http_url}/v2/models/{m}/ready" for m in self.models]
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if all(_http_ok(u) for u in urls):
                log.info("triton.ready", grpc=self.grpc_url, pid=self.pid)
                return
            time.sleep(0.1)
        raise TritonStartError(
            f"tritonserver not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group; remove our /dev/shm files
        and unread trace files. A work folder we created is removed too when the server
        stopped cleanly; after a crash or a kill it stays, for its log."""
        proc = self._proc
        clean = False
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:  # not needed for a stop we do ourselves (KILL: no trap)
            with contextlib.suppress(ProcessLookupError):
                watchdog.kill()
            watchdog.wait()
        if proc is not None:
            clean = proc.poll() is None  # running until now: our SIGTERM ends it
            pgid = proc.pid  # start_new_session: the server leads its own group
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("triton.kill_after_timeout", pid=proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
                    proc.wait(timeout=10)
            # Stubs live in the server's group; none may outlive it.
            self._reap_group(pgid)
            clean = clean and proc.returncode == 0
            log.info("triton.stopped", pid=proc.pid, returncode=proc.returncode)
        self._proc = None
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None
        trace = self.trace_file
        if trace is not None:  # unread traces are of no use once the server is gone
            for path in trace.parent.glob(f"{trace.name}*"):
                with contextlib.suppress(OSError):
                    path.unlink()
        leftovers = self.shm_files()
        for path in leftovers:
            with contextlib.suppress(OSError):
                path.unlink()
        if leftovers:
            log.warning("triton.shm_leftovers_removed", files=[p.name for p in leftovers])
        if self._own_workdir and self.workdir is not None and self.workdir.exists():
            if clean:
                shutil.rmtree(self.workdir, ignore_errors=True)
            elif proc is not None:
                log.warning(
                    "triton.workdir_kept", workdir=str(self.workdir), log=str(self.log_path)
                )

    @staticmethod
    def _reap_group(pgid: int) -> None:
        for _ in range(50):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)

    def shm_files(self) -> list[Path]:
        """Files in /dev/shm that belong to this server (by our unique prefix)."""
        if not SHM_DIR.is_dir():
            return []
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*"))

    def group_alive(self) -> bool:
        """Whether any process of this server's group still exists (after stop: must not)."""
        if self._pgid is None:
            return False
        try:
            os.killpg(self._pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    # -- context managers ----------------------------------------------------------
    def __enter__(self) -> LocalTriton:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalTriton:
        await self.start_async()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)
